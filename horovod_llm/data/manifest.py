"""The dataset's manifest: what a dataset promises, in one typed place.

`{output_url}/dataset/manifest.json` is written last by preprocessing: it is the commit
marker, and a reader trusts no dataset without it. It says how the windows were cut
(window size, overlap, tail policy), which tokenizer encoded them (its hash and size),
how many there are per split, where the Word2Vec vectors are, and, as a report, where
the time went. Preprocessing builds a `Manifest`; training, evaluation and the launcher
read one; `from_dict` refuses a manifest that breaks a promise, naming the field.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from horovod_llm import layout, storage
from horovod_llm.errors import UserError

# Bumped when the dataset's layout or meaning changes: older datasets are rebuilt.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class TokenizerInfo:
    url: str
    sha256: str  # of the serialized sentencepiece model: checkpoints must match it
    vocab_size: int
    special_ids: dict[str, int]
    sample_bytes: int | None = None  # trained on this much sampled text
    reused_from: str | None = None  # or taken from tokenizer.model_url


@dataclass(frozen=True)
class EmbeddingsInfo:
    url: str  # (vocab_size, vector_size) float32, row i = piece id i
    vector_size: int
    coverage: float  # share of ids with a trained vector
    sample_tokens: int


@dataclass(frozen=True)
class CorpusInfo:
    input_url: str
    files: int
    bytes: int
    replaced_sequences: int
    binary_files_skipped: int
    binary_files: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SplitInfo:
    documents: int
    tokens: int
    windows: int
    row_groups: int  # Petastorm shards by row group: at least one per rank
    files: list[str]  # Parquet parts under dataset/<split>/
    partitions: dict = field(default_factory=dict)  # a report: count, windows min/median/max, slowest task
    # ids its consecutive windows share (windows.split_overlap); None only where a Manifest
    # is built by hand: `from_dict` gives an older manifest's splits the manifest's overlap
    overlap: int | None = None


@dataclass(frozen=True)
class Manifest:
    fingerprint: str  # of the config and the corpus's content: equal means reusable
    created_at: str
    window_size: int  # a stored window holds window_size + 1 ids
    overlap: int  # consecutive training windows share this many ids (each split's: overlap_of)
    tokenizer: TokenizerInfo
    embeddings: EmbeddingsInfo | None
    corpus: CorpusInfo
    splits: dict[str, SplitInfo]
    stages: dict[str, dict]  # a report: seconds and Spark counters per stage
    wall_seconds: float
    config: dict  # the resolved config, redacted
    format_version: int = FORMAT_VERSION
    column: str = "ids"
    tail_policy: str = "drop"  # ids after a partition's last full window are dropped, never padded

    @property
    def stride(self) -> int:
        return self.window_size - self.overlap

    def overlap_of(self, split: str) -> int:
        """The ids consecutive windows of `split` share: validation's is capped at half a window."""
        overlap = self.splits[split].overlap
        return self.overlap if overlap is None else overlap

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> Manifest:
        """A Manifest from its JSON form; ValueError naming what is missing or broken."""
        if values.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format_version {values.get('format_version')!r} is not {FORMAT_VERSION}")
        try:
            embeddings = values["embeddings"]
            manifest = cls(
                **{k: values[k] for k in ("fingerprint", "created_at", "window_size", "overlap", "stages", "wall_seconds", "config")},
                tokenizer=TokenizerInfo(**values["tokenizer"]),
                embeddings=EmbeddingsInfo(**embeddings) if embeddings else None,
                corpus=CorpusInfo(**values["corpus"]),
                # a manifest written before splits recorded their overlap cut both at the manifest's
                splits={name: SplitInfo(**{"overlap": values["overlap"], **split}) for name, split in values["splits"].items()},
                format_version=values["format_version"],
                column=values.get("column", "ids"),
                tail_policy=values.get("tail_policy", "drop"),
            )
        except KeyError as exc:
            raise ValueError(f"missing field {exc}") from None
        except TypeError as exc:  # an unknown or missing field of a part
            raise ValueError(str(exc)) from None
        problems = manifest.problems()
        if problems:
            raise ValueError("; ".join(problems))
        return manifest

    def problems(self) -> list[str]:
        """The promises this manifest breaks (none for one that preprocessing wrote)."""
        problems = []
        if not 0 <= self.overlap < self.window_size:
            problems.append(f"overlap {self.overlap} must be in [0, window_size {self.window_size})")
        if self.tokenizer.vocab_size < 16:
            problems.append(f"tokenizer.vocab_size {self.tokenizer.vocab_size} is below 16")
        for name in layout.SPLITS:
            split = self.splits.get(name)
            if split is None:
                problems.append(f"split {name} is missing")
            elif split.windows < 1 or not split.files:
                problems.append(f"split {name} holds no window")
            elif split.overlap is not None and not 0 <= split.overlap < self.window_size:
                problems.append(f"split {name}'s overlap {split.overlap} must be in [0, window_size {self.window_size})")
        if self.embeddings is not None and self.embeddings.vector_size < 1:
            problems.append(f"embeddings.vector_size {self.embeddings.vector_size} must be positive")
        return problems


def write_manifest(output_url: str, manifest: Manifest) -> None:
    """Write the manifest: the dataset's commit marker, so the last thing preprocessing writes."""
    storage.write_json(layout.manifest_url(output_url), manifest.to_dict())


def read_manifest_if_complete(output_url: str) -> Manifest | None:
    """The dataset's manifest; None when there is no complete dataset of this format."""
    url = layout.manifest_url(output_url)
    if not storage.exists(url):
        return None
    try:
        return Manifest.from_dict(json.loads(storage.read_bytes(url)))
    except ValueError:
        return None


def read_manifest(output_url: str) -> Manifest:
    """The manifest of a complete dataset, or a UserError saying how to build one."""
    url = layout.manifest_url(output_url)
    if storage.exists(url):
        try:
            return Manifest.from_dict(json.loads(storage.read_bytes(url)))
        except ValueError as exc:
            raise UserError(
                f"the dataset manifest {url} is not one this version can use ({exc}): run 'horovod-llm preprocess --force' with output_url={output_url}"
            ) from None
    raise UserError(
        f"no complete dataset at {layout.dataset_url(output_url)} (manifest.json missing or unreadable): "
        f"run 'horovod-llm preprocess' with output_url={output_url} first"
    )

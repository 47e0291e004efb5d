"""The one storage seam: local paths and remote URLs (s3://, s3a://, memory://) through fsspec.

Filesystems are created on demand inside the process that uses them, never at import
time: s3fs is not fork-safe, and Spark tasks and Horovod ranks are forked processes.
Every such process calls `configure` with the run's storage settings (they travel in
the config, not in environment variables, which a cluster's executors do not share).

Credentials come from the standard AWS chain. Transient S3 failures (5xx, throttling,
timeouts, refused connections) are retried by botocore's "standard" mode with
exponential backoff; what is left after the retries, and permanent failures (no such
bucket, access denied), become one-line `StorageError`s naming the URL. An endpoint that
goes silent (a cut link, a vanished host) fails an attempt after `read_timeout` seconds
(s3fs tries a timed-out call up to 5 times, each with botocore's attempts): see
`without_expect_continue` for the one wait that had no bound.
"""

from __future__ import annotations

import functools
import io
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs

from horovod_llm.errors import UserError
from horovod_llm.redaction import redact_urls


class StorageError(UserError):
    """Storage that cannot be reached or refuses a request, after retries."""


@dataclass(frozen=True)
class S3Settings:
    """How this process talks to S3: one value, built once from the run's config
    (`storage_settings`) and handed whole to the Spark tasks and ranks that need it, as
    Horovod's Store.to_remote does. The defaults here are the config's (config.S3Config)."""

    # An S3-compatible store (MinIO, a test server); None: the AWS chain decides,
    # including the AWS_ENDPOINT_URL environment variable.
    endpoint_url: str | None = None
    region: str | None = None
    # Attempts per request for transient failures (botocore "standard" retries).
    max_attempts: int = 5
    # Seconds a request waits for a silent endpoint before that attempt fails.
    read_timeout: float = 60.0


def storage_settings(config) -> S3Settings:
    """The S3 settings of a run's config (its `storage.s3` section)."""
    s3 = config.storage.s3
    return S3Settings(endpoint_url=s3.endpoint_url or None, region=s3.region or None, max_attempts=s3.max_attempts, read_timeout=s3.read_timeout)


_settings = S3Settings()


def use(settings: S3Settings) -> None:
    """Talk to S3 with `settings` in this process from now on (the CLI, a Spark task, a
    rank: each is handed the value and installs it once)."""
    global _settings
    _settings = settings


def settings() -> S3Settings:
    """This process's S3 settings, to hand to the processes and tasks it starts."""
    return _settings


@functools.cache  # once per process: botocore's list is global
def without_expect_continue() -> None:
    """S3 clients made from now on in this process send PUT bodies without first asking
    for "100 Continue". Applied where S3 clients' options are made (`s3_options`).

    botocore adds `Expect: 100-continue` to every S3 PUT with a body, and aiohttp (under
    s3fs) then waits for the server's interim answer with no timeout at all: an endpoint
    that went silent hung a checkpoint write for good (tests/integration/
    test_s3_pipeline.py). Without the header aiohttp's read timeout bounds the wait. The
    cost: a PUT the server refuses still sends its body. botocore registers the handler
    for every new client from this list; nothing else in it changes.
    """
    from botocore import handlers

    handlers.BUILTIN_HANDLERS[:] = [entry for entry in handlers.BUILTIN_HANDLERS if entry[1] is not handlers.add_expect_header]


def s3_options() -> dict:
    """fsspec/s3fs storage options (also what Petastorm's readers take), for clients
    that send no `Expect: 100-continue` (without_expect_continue)."""
    without_expect_continue()
    client: dict = {}
    if _settings.endpoint_url:
        client["endpoint_url"] = _settings.endpoint_url
    if _settings.region:
        client["region_name"] = _settings.region
    return {
        "client_kwargs": client,
        "config_kwargs": {
            "retries": {"max_attempts": _settings.max_attempts, "mode": "standard"},
            "connect_timeout": 10,
            "read_timeout": _settings.read_timeout,
        },
    }


def options_for(url: str) -> dict:
    return s3_options() if normalize(url).startswith("s3://") else {}


_PERMANENT = {"NoSuchBucket": "the bucket does not exist", "AccessDenied": "access denied", "403": "access denied", "InvalidAccessKeyId": "invalid credentials"}


def storage_error(exc: BaseException, url: str) -> StorageError | None:
    """A one-line StorageError for an exception from the storage stack, else None.

    The message never carries credentials: an endpoint URL's user:password part (which
    botocore repeats in its own messages too) is redacted.
    """
    module = type(exc).__module__ or ""
    name = type(exc).__name__
    if not (module.startswith(("botocore", "aiobotocore", "s3fs", "aiohttp", "urllib3")) or isinstance(exc, (PermissionError, ConnectionError, TimeoutError))):
        return None
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    for code, meaning in _PERMANENT.items():
        if code in text or code in name:
            message = f"storage refused {url} ({meaning}: {text[:200]}): check the URL, the bucket and your AWS credentials"
            return StorageError(redact_urls(message))
    endpoint = _settings.endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or "AWS S3"
    message = f"storage at {endpoint} failed for {url} after retries ({name}: {text[:200]}): check the network and storage.s3.endpoint_url"
    return StorageError(redact_urls(message))


@contextmanager
def storage_errors_as(url: str) -> Iterator[None]:
    """Storage-stack exceptions raised inside (from fsspec, or from a reader such as
    Petastorm or pyarrow) as one-line StorageErrors naming `url`; user errors pass."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        translated = storage_error(exc, str(url))
        if translated is None:
            raise
        raise translated from exc


def _guarded(function):
    """Translate storage-stack exceptions of a `function(url, ...)` into StorageErrors."""

    def wrapper(url, *args, **kwargs):
        with storage_errors_as(url):
            return function(url, *args, **kwargs)

    wrapper.__name__, wrapper.__doc__ = function.__name__, function.__doc__
    return wrapper


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def normalize(url: str) -> str:
    """`s3a://` is how Hadoop names the same objects as `s3://`; local paths go absolute."""
    url = str(url)
    if url.startswith("s3a://"):
        url = "s3://" + url[len("s3a://") :]
    if url.startswith("file://"):
        url = url[len("file://") :]
    if not is_remote(url):
        return os.path.abspath(os.path.expanduser(url))
    return url.rstrip("/")


def join(url: str, *parts: str) -> str:
    url = normalize(url)
    if is_remote(url):
        return posixpath.join(url, *parts)
    return os.path.join(url, *parts)


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path within it), with this process's storage settings."""
    return url_to_fs(normalize(url), **options_for(url))


@_guarded
def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


@_guarded
def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str):
    return json.loads(read_bytes(url))


@_guarded
def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object so that readers see the old state or the new, never half.

    S3 PUTs are atomic per object; a local file is written beside and renamed.
    """
    fs, path = filesystem(url)
    if is_remote(url):
        fs.pipe_file(path, data)
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        # mkstemp creates 0600 files; give the result the mode a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def write_json(url: str, value) -> None:
    write_text(url, json.dumps(value, indent=2, sort_keys=True) + "\n")


@_guarded
def write_with(url: str, write) -> None:
    """Stream a large output (a Parquet part) with `write(binary_handle)`.

    On S3 the object appears only when the upload completes, so a failed write leaves
    nothing; local partial files do not count either, because the dataset's manifest,
    written last, is what makes the parts visible.
    """
    fs, path = filesystem(url)
    if not is_remote(url):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    with fs.open(path, "wb") as handle:
        write(handle)


@_guarded
def list_dir(url: str) -> list[str]:
    """Names (not paths) directly under a folder URL; empty when it does not exist."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


@_guarded
def size(url: str) -> int:
    """Bytes of the object at url."""
    fs, path = filesystem(url)
    return int(fs.size(path))


@_guarded
def remove(url: str) -> None:
    """Remove a file or a folder tree; a missing one is not an error."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextmanager
def open_binary(url: str) -> Iterator[io.BufferedIOBase]:
    """A binary file object to stream `url` from (storage failures as StorageErrors)."""
    with storage_errors_as(url), fsspec.open(normalize(url), "rb", **options_for(url)) as handle:
        yield handle


@_guarded
def copy_to_local(url: str, local_path: str | Path) -> Path:
    local_path = Path(local_path)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    with fsspec.open(normalize(url), "rb", **options_for(url)) as src, open(local_path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    return local_path


@contextmanager
def local_file(url: str, suffix: str = "") -> Iterator[Path]:
    """A local path holding the object at `url`, for libraries that need a real file."""
    if not is_remote(url):
        yield Path(normalize(url))
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield copy_to_local(url, Path(tmp) / ("object" + suffix))


def bytes_io(url: str) -> io.BytesIO:
    return io.BytesIO(read_bytes(url))

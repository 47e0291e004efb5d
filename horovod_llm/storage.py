"""The one storage seam: local paths and remote URLs (s3://, memory://) through fsspec.

Filesystems are created on demand inside the process that uses them, never at import
time: s3fs is not fork-safe, and Spark tasks and Horovod ranks are forked processes.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import fsspec
from fsspec.core import url_to_fs


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
    """(filesystem, path within it). Endpoint and credentials come from the AWS chain."""
    return url_to_fs(normalize(url))


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def read_json(url: str):
    return json.loads(read_bytes(url))


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


def open_output(url: str):
    """A writable binary stream for large outputs (Parquet parts, archives)."""
    fs, path = filesystem(url)
    if not is_remote(url):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return fs.open(path, "wb")


def list_dir(url: str) -> list[str]:
    """Names (not paths) directly under a folder URL; empty when it does not exist."""
    fs, path = filesystem(url)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def remove(url: str) -> None:
    """Remove a file or a folder tree; a missing one is not an error."""
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def copy_to_local(url: str, local_path: str | Path) -> Path:
    local_path = Path(local_path)
    local_path.parent.mkdir(parents=True, exist_ok=True)
    with fsspec.open(normalize(url), "rb") as src, open(local_path, "wb") as dst:
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

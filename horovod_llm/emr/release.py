"""The release: the files a cluster installs and runs, built from this checkout.

A release is named by a digest of its inputs (the package's sources, the installation
script and its pins, the bootstrap), and lives under `<emr.s3_url>/artifacts/<id>/`. The
same checkout always maps to the same keys, and a cluster's bootstrap action names the
release its nodes installed, so `emr submit` can tell when a checkout has moved on.
"""

from __future__ import annotations

import configparser
import hashlib
import io
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from horovod_llm.config import CONFIG_DIR
from horovod_llm.errors import UserError

log = logging.getLogger(__name__)

# What the wheel is built from, besides the package folder.
PACKAGE_FILES = ("setup.py", "setup.cfg", "README.md")
# What bootstrap.sh unpacks to run the installation script of the local set-up.
STACK_FILES = ("scripts/install-stack.sh", "constraints.txt", "setup.cfg")
BOOTSTRAP = "emr/bootstrap.sh"
ENTRY = "horovod_llm/__main__.py"  # uploaded as entry.py


def source_root() -> Path:
    """The checkout this package runs from: releases are built from its files."""
    root = CONFIG_DIR.parent
    missing = [name for name in (*PACKAGE_FILES, *STACK_FILES, BOOTSTRAP) if not (root / name).is_file()]
    if missing:
        raise UserError(
            f"horovod-llm emr builds the cluster's release from a checkout, but {root} lacks {', '.join(missing)}: "
            "run it from a clone of the project (pip install -e .)"
        )
    return root


def release_inputs(root: Path) -> dict[str, bytes]:
    """Every file that goes into a release, by its path relative to the checkout."""
    names = set(PACKAGE_FILES) | set(STACK_FILES) | {BOOTSTRAP}
    for path in (root / "horovod_llm").rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            names.add(path.relative_to(root).as_posix())
    return {name: (root / name).read_bytes() for name in sorted(names)}


def release_id(inputs: dict[str, bytes]) -> str:
    """12 hex digits of a digest over names and contents: equal inputs, equal id."""
    digest = hashlib.sha256()
    for name in sorted(inputs):
        digest.update(name.encode() + b"\0" + hashlib.sha256(inputs[name]).digest())
    return digest.hexdigest()[:12]


def package_version(inputs: dict[str, bytes]) -> str:
    parser = configparser.ConfigParser()
    parser.read_string(inputs["setup.cfg"].decode())
    return parser["metadata"]["version"]


def wheel_name(version: str) -> str:
    return f"horovod_llm-{version}-py3-none-any.whl"


@dataclass(frozen=True)
class Release:
    """A release's id and version, and its files once built."""

    id: str
    version: str
    files: dict[str, Path]  # name in S3 (bootstrap.sh, stack.tar.gz, the wheel, entry.py) -> local file


def describe_release(root: Path) -> tuple[str, str]:
    """(id, version) without building anything: what --dry-run needs."""
    inputs = release_inputs(root)
    return release_id(inputs), package_version(inputs)


def stack_bundle(inputs: dict[str, bytes]) -> bytes:
    """stack.tar.gz: the installation script with the pins it reads, byte-for-byte stable."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for name in STACK_FILES:
            info = tarfile.TarInfo(name)
            info.size = len(inputs[name])
            info.mode = 0o755 if name.endswith(".sh") else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(inputs[name]))
    return buffer.getvalue()


def build_wheel(inputs: dict[str, bytes], out_dir: Path) -> Path:
    """`pip wheel --no-deps` of a clean copy of the inputs: no stale build/ folder leaks in."""
    with tempfile.TemporaryDirectory(prefix="horovod-llm-wheel-") as tmp:
        src = Path(tmp) / "src"
        for name, data in inputs.items():
            if name in PACKAGE_FILES or name.startswith("horovod_llm/"):
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                (src / name).write_bytes(data)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--disable-pip-version-check", "-q", "-w", str(out_dir), str(src)]
        log.info("building the horovod-llm wheel: pip wheel --no-deps")
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise UserError(f"pip wheel failed ({result.stderr.strip().splitlines()[-1:]}): run '{' '.join(command)}' to see why")
    wheel = out_dir / wheel_name(package_version(inputs))
    if not wheel.is_file():
        raise UserError(f"pip wheel did not produce {wheel.name} in {out_dir}: check setup.cfg's name and version")
    return wheel


def build_release(root: Path, out_dir: Path) -> Release:
    """Build every file of the release into out_dir."""
    inputs = release_inputs(root)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "stack.tar.gz").write_bytes(stack_bundle(inputs))
    shutil.copyfile(root / BOOTSTRAP, out_dir / "bootstrap.sh")
    shutil.copyfile(root / ENTRY, out_dir / "entry.py")
    wheel = build_wheel(inputs, out_dir)
    files = {name: out_dir / name for name in ("bootstrap.sh", "stack.tar.gz", "entry.py")}
    files[wheel.name] = wheel
    return Release(id=release_id(inputs), version=package_version(inputs), files=files)

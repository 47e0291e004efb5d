"""emr/bootstrap.sh for real, on this machine: --local-test skips dnf and sudo and installs
the release `horovod-llm emr up` would upload into a fresh venv, through the same
scripts/install-stack.sh as the local set-up. Slow (pip installs the whole stack, ~2 min);
the horovod wheel comes from the set-up's cache, as a prebuilt one comes from S3 on EMR.
"""

import functools
import os
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from horovod_llm.emr.release import build_release, source_root, wheel_name

TORCH = "torch==2.13.0"


@pytest.fixture
def torch_index(tmp_path):
    """A one-package index (PEP 503) served on loopback, like download.pytorch.org/whl/cpu.

    The torch wheel comes from pip's configured local wheels (--no-index): no internet.
    """
    wheels = tmp_path / "torch-wheel"
    found = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-index", "-d", str(wheels), TORCH], capture_output=True, text=True)
    if found.returncode != 0:
        pytest.skip(f"no local {TORCH} wheel to serve: {found.stderr.strip()[-200:]}")
    (wheel,) = wheels.glob("torch-*.whl")
    index = tmp_path / "torch-index"
    (index / "torch").mkdir(parents=True)
    (index / "torch" / "index.html").write_text(f'<html><body><a href="/files/{wheel.name}">{wheel.name}</a></body></html>\n')
    (index / "files").symlink_to(wheels)
    requested: list[str] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(RecordingHandler, requested, directory=str(index)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", requested
    server.shutdown()


class RecordingHandler(SimpleHTTPRequestHandler):
    def __init__(self, requested, *args, **kwargs):
        self.requested = requested
        super().__init__(*args, **kwargs)

    def log_message(self, format, *args):
        self.requested.append(self.path)


# The environment of a fresh node: no venv of this checkout active. pip does not compile
# the installed modules to bytecode here (PIP_COMPILE=false; Python compiles what the
# checks import as they import it): that took about half of each install's CPU time in
# a suite that is CPU-bound, and what the test checks (what is installed, and that it
# imports and runs) does not depend on it. A node's bootstrap compiles as pip does.
NODE_ENV = {**{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}, "PIP_COMPILE": "false"}


def bootstrap_command(tmp_path: Path, index_url: str, wheel_cache: Path, *options: str) -> list[str]:
    """bootstrap.sh --local-test installing the release of this checkout into tmp_path/opt/venv."""
    root = source_root()
    release = build_release(root, tmp_path / "artifacts")
    return [
        "bash", str(root / "emr/bootstrap.sh"), "--local-test", *options,
        "--stack", str(release.files["stack.tar.gz"]),
        "--package", str(release.files[wheel_name(release.version)]),
        "--venv", str(tmp_path / "opt" / "venv"), "--home", str(tmp_path / "opt" / "home"),
        "--wheel-cache", str(wheel_cache), "--torch-index-url", index_url,
    ]  # fmt: skip


@pytest.mark.slow
def test_bootstrap_installs_the_stack_into_a_fresh_venv_and_is_idempotent(tmp_path, torch_index):
    index_url, requested = torch_index
    venv = tmp_path / "opt" / "venv"
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "horovod-llm" / "wheels"
    command = bootstrap_command(tmp_path, index_url, cache)
    env = NODE_ENV

    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    assert first.returncode == 0, first.stderr[-6000:]
    assert f"installing torch 2.13.0 from {index_url}" in first.stderr
    assert "/torch/" in requested  # pip asked the torch index
    assert f"ready in {venv}" in first.stderr

    check = subprocess.run(
        [str(venv / "bin/python"), "-c", "import horovod.torch as hvd, horovod_llm, horovod_llm.cli, pyspark, petastorm, pyarrow_hotfix; "
         "assert hvd.gloo_built(); print(horovod_llm.__file__)"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]
    # horovod-llm is the release's wheel installed into the venv, not this checkout
    assert check.stdout.strip().startswith(str(venv / "lib"))
    assert (venv / "bin" / "horovod-llm").exists()

    second = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "stack up to date" in second.stderr and "installing torch" not in second.stderr


@pytest.mark.slow
def test_bootstrap_without_horovod_builds_and_installs_no_horovod(tmp_path, torch_index):
    """The EMR path of train.launcher=torch_distributor: nothing compiled, no horovod."""
    index_url, _ = torch_index
    venv = tmp_path / "opt" / "venv"
    empty_cache = tmp_path / "no-wheels"  # a build would have to start from nothing here
    command = bootstrap_command(tmp_path, index_url, empty_cache, "--without-horovod")
    env = NODE_ENV
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    assert done.returncode == 0, done.stderr[-6000:]
    assert "no horovod: nothing to build" in done.stderr and "building horovod" not in done.stderr
    assert not empty_cache.exists() or not any(empty_cache.iterdir())
    check = subprocess.run(
        [str(venv / "bin/python"), "-c", "import horovod_llm.launchers.torch_distributor, pyspark.ml.torch.distributor, petastorm; "
         "import importlib.util; print(importlib.util.find_spec('horovod'))"],
        capture_output=True, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr[-3000:]
    assert check.stdout.strip() == "None"  # no horovod in the venv
    frozen = subprocess.run([str(venv / "bin/python"), "-m", "pip", "freeze"], capture_output=True, text=True, env=env).stdout
    assert "horovod==" not in frozen.lower() and "horovod-llm" in frozen.lower().replace("_", "-")

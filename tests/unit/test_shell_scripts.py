"""The shell scripts: clean under shellcheck, and bootstrap.sh's argument checks."""

import os
import shutil
import subprocess

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = ["emr/bootstrap.sh", "scripts/install-stack.sh", "scripts/tensorboard-screenshot.sh"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(REPO_ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# Never skipped: `make setup` installs shellcheck (Debian's package), as it does Java.
@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_clean_under_shellcheck(script):
    assert shutil.which("shellcheck"), "shellcheck is not installed: run 'make setup' (Debian: apt-get install shellcheck)"
    result = subprocess.run(["shellcheck", str(REPO_ROOT / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def bootstrap(*args):
    return subprocess.run(["bash", str(REPO_ROOT / "emr/bootstrap.sh"), *args], capture_output=True, text=True, timeout=60)


def test_bootstrap_names_what_is_missing(tmp_path):
    result = bootstrap("--local-test", "--venv", str(tmp_path / "venv"))
    assert result.returncode == 1 and "--stack URL is required" in result.stderr
    result = bootstrap("--local-test", "--stack", "s.tar.gz", "--package", "p.whl", "--venv", "relative/venv")
    assert result.returncode == 1 and "--venv must be an absolute path" in result.stderr
    result = bootstrap(
        "--local-test", "--stack", str(tmp_path / "none.tar.gz"), "--package", "p.whl", "--venv", str(tmp_path / "v"), "--home", str(tmp_path / "h")
    )
    assert result.returncode == 1 and f"{tmp_path}/none.tar.gz does not exist" in result.stderr
    result = bootstrap("--frobnicate")
    assert result.returncode == 1 and "unknown argument '--frobnicate'" in result.stderr


def test_a_gpu_build_without_the_cuda_toolkit_is_refused_before_installing_anything(tmp_path):
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["bash", str(REPO_ROOT / "scripts/install-stack.sh"), "--venv", str(venv), "--gpu", "--skip-system"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "CUDA_HOME": str(tmp_path / "no-cuda")},
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"install-stack: --gpu builds horovod's NCCL operations with the CUDA toolkit, but there is no {tmp_path}/no-cuda/bin/nvcc: "
        "install the toolkit (or set CUDA_HOME), pass --horovod-wheel, or use --without-horovod (train.launcher=torch_distributor)"
    )
    assert not venv.exists()

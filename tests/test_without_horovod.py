"""The torch_distributor launcher's tests (tests/without_horovod), run in a process
where Horovod cannot be imported: a set-up without Horovod trains, fails and restarts
as the Horovod launchers do."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import HIDE_HOROVOD, REPO_ROOT, TINY_DATASET_ENV

pytestmark = [pytest.mark.spark, pytest.mark.timeout(1800)]


def test_the_torch_distributor_launcher_passes_its_tests_without_horovod(tiny_dataset):
    config, _ = tiny_dataset
    path = os.pathsep.join(p for p in (str(HIDE_HOROVOD), str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, TINY_DATASET_ENV: str(config.output_url)}
    command = [sys.executable, "-m", "pytest", "tests/without_horovod", "-q", "-rs", "-p", "no:cacheprovider"]
    done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1500)
    report = done.stdout[-8000:] + done.stderr[-2000:]
    assert done.returncode == 0, report  # pytest's 5 (nothing collected) fails here too
    summary = done.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary) and not re.search(r"skipped|deselected|error", summary), report

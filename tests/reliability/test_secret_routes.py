"""No secret on any disk or command line, on any host (issue 25): under each launcher, a
run whose config file holds credentials is watched throughout, a rank killed with
SIGKILL mid-run, and the job restarted: no process's command line and no file the run
creates (temporary folders, Spark's local folders, TorchDistributor's pickled arguments,
the run's outputs) ever holds a credential, and the ranks still got them (from the
driver, in memory: secret_channel.py)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
import threading
import time
from pathlib import Path

import pytest

from horovod_llm.config import from_dict, to_dict
from horovod_llm.launchers.launch import launch_training
from tests.e2e.test_train import with_output
from tests.reliability.test_rank_failure import RankKiller

pytestmark = [pytest.mark.spark, pytest.mark.horovod]

SECRET = "S3CR3T-route-77-never-on-disk"
MAX_SCANNED_BYTES = 64 * 2**20


def _modified_since(entry: os.DirEntry, since: float) -> bool:
    """False for an entry gone since it was listed (a JVM's unpacked native library, seen
    in CI: its FileNotFoundError ended the scanner's thread)."""
    try:
        return entry.stat(follow_symlinks=False).st_mtime >= since
    except FileNotFoundError:
        return False


def files_under(folder: Path):
    """The files under `folder` (or the file itself). A folder that vanishes while it is
    walked (another test's temporary one) ends only its own walk: os.walk skips what it
    cannot list, where rglob raised, and the exception ended the scanner's thread with a
    warning, leaving the run unwatched from then on (seen in CI)."""
    if not folder.is_dir():
        yield folder
        return
    for root, _, names in os.walk(folder):
        for name in names:
            yield Path(root, name)


class Scanner(threading.Thread):
    """Every command line on the machine, and every file the run may write, searched
    for SECRET, again and again while the run lasts."""

    def __init__(self, started: float, own: Path):
        super().__init__(daemon=True)
        self.started, self.own = started, own
        self.stop = threading.Event()
        self.leaks: set[str] = set()
        self.rounds = 0
        self.finished = False
        self.command_lines = 0

    def folders(self) -> list[Path]:
        temp = Path(tempfile.gettempdir())
        found = [self.own, *(Path(p) for p in os.environ.get("SPARK_LOCAL_DIRS", "").split(",") if p)]
        for entry in os.scandir(temp):
            if entry.name.startswith(("pytest-of-", "bash_jobs")):
                continue  # the suite's own folders (this run's is `own`)
            if entry.name.startswith(("blockmgr-", "spark-")) or _modified_since(entry, self.started - 1):
                found.append(Path(entry.path))
        return found

    def scan(self) -> None:
        needle = SECRET.encode()
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    line = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                self.command_lines += 1
                if needle in line:
                    shown = line.replace(b"\0", b" ")[:200]
                    self.leaks.add(f"/proc/{pid}/cmdline: {shown!r}")
        for folder in self.folders():
            for path in files_under(folder):
                try:
                    if path.is_file() and not path.is_symlink() and path.stat().st_size < MAX_SCANNED_BYTES and needle in path.read_bytes():
                        self.leaks.add(str(path))
                except OSError:
                    continue
        self.rounds += 1

    def run(self) -> None:
        while not self.stop.is_set():
            self.scan()
            time.sleep(0.1)
        self.finished = True  # checked by the test: the thread watched to the end


@pytest.mark.parametrize("launcher", ["spark", "horovodrun", "torch_distributor"])
def test_no_credential_on_any_disk_or_command_line(launcher, fresh_run, tiny_dataset, spark, tmp_path):
    config, _ = tiny_dataset
    run = with_output(config, fresh_run, launcher=launcher, max_steps=40, checkpoint_interval=4, log_interval=50, max_restarts=1)
    values = to_dict(run)
    values["spark"]["conf"] = {**values["spark"]["conf"], "spark.hadoop.fs.s3a.secret.key": SECRET, "spark.ssl.keyStorePassword": SECRET}
    run = from_dict(values)  # as a config file would give it: nothing on the command line
    run = dataclasses.replace(run, train=dataclasses.replace(run.train, batch_size=32))  # slower steps: time to kill one
    scanner = Scanner(time.time(), tmp_path)
    scanner.start()
    killer = RankKiller(fresh_run, 4)  # SIGKILL rank 1 after the first checkpoint
    killer.start()
    try:
        summary = launch_training(run, spark)["summary"]
    finally:
        scanner.stop.set()
        scanner.join()
    scanner.scan()  # once more, after the kill and the restart
    assert killer.killed_at_step is not None and summary["resumed_from_step"] >= 4, "the rank was never killed"
    assert summary["launch"]["credentials_from_driver"] == 2  # the ranks got both, from the driver
    assert scanner.finished, "the scanner's thread ended early: the run was not watched throughout"
    assert scanner.rounds >= 5 and scanner.command_lines > 50
    assert not scanner.leaks, sorted(scanner.leaks)

"""train.launcher=horovodrun: Horovod's own launcher for N ranks on this host, each
running `python -m horovod_llm.worker` (whose worker is always train_worker: `run`'s
`worker` is not passed to another process); and how its output tells each rank's exit."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from horovod_llm.launchers.base import LOOPBACK, Launcher
from horovod_llm.launchers.exits import RankExit, job_failed
from horovod_llm.launchers.horovod_env import BIND_ADDRESS_ENV, require_horovod

log = logging.getLogger(__name__)


class Horovodrun(Launcher):
    name = "horovodrun"
    backend = "horovod"
    on_spark_tasks = False
    elastic = False
    needs_horovod = True

    def run(self, worker, config, spark=None) -> dict:
        require_horovod(self.name)
        from horovod_llm import layout, storage
        from horovod_llm.launchers.secret_channel import SECRETS_AT_ENV, serving_secrets
        from horovod_llm.launchers.watchdog import WATCHDOG_ENV, stall_guard
        from horovod_llm.redaction import redacted_yaml, secret_values

        tc = config.train
        with tempfile.TemporaryDirectory() as tmp:
            # The file holds no credentials (a killed launcher leaves it behind): the values
            # redaction hides reach the ranks over the driver's socket (secret_channel.py).
            config_path = Path(tmp) / "resolved.yaml"
            # No bar on the ranks: this driver reads their output line by line, and a bar's
            # carriage returns would each end a line.
            config_path.write_text(redacted_yaml(dataclasses.replace(config, progress=False)))
            env = {**os.environ, BIND_ADDRESS_ENV: LOOPBACK}
            command = horovodrun_command(str(config_path), tc.num_proc, tc.start_timeout)
            log.info("running: %s", " ".join(command))
            # horovodrun's output (the ranks' logs and its own reports) goes on to stderr, and
            # its reports of each rank's exit say which rank failed first.
            exits: list[RankExit] = []
            launched: list[subprocess.Popen] = []
            # On a stall, horovodrun and every process under it are stopped: its ranks run in
            # process groups of their own (horovod's safe_shell_exec), and a frozen one would
            # hold the output pipe this driver reads open.

            def stop() -> None:
                if launched:
                    kill_tree(launched[0].pid)

            # horovodrun copies its environment onto the ranks' command lines: only the path of
            # a socket that answers this user's processes travels there, never a credential.
            with (
                stall_guard(tc.stall_timeout, LOOPBACK, abort=stop, start_allowance_s=tc.start_timeout) as watchdog,
                serving_secrets(secret_values(config), None) as secrets_at,
            ):
                if watchdog:
                    env[WATCHDOG_ENV] = watchdog.address
                if secrets_at:
                    env[SECRETS_AT_ENV] = secrets_at
                with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, errors="replace", env=env, start_new_session=True) as process:
                    launched.append(process)
                    for line in process.stdout:
                        sys.stderr.write(line)
                        exit_ = horovodrun_exit(line, len(exits))
                        if exit_ is not None:
                            exits.append(exit_)
            returncode = process.returncode
        if returncode != 0:
            raise job_failed(exits, "horovodrun", f"horovodrun exited with status {returncode}: see the rank logs above")
        return {"rank": 0, "summary": storage.read_json(storage.join(layout.stats_url(config.output_url), "summary.json"))}


def horovodrun_command(config_path: str, num_proc: int, start_timeout: int) -> list[str]:
    """The documented local command: N ranks on this host, Gloo over loopback."""
    return [
        sys.executable, "-m", "horovod.runner.launch",
        "-np", str(num_proc), "-H", f"localhost:{num_proc}",
        "--gloo", "--network-interface", "lo", "--start-timeout", str(start_timeout),
        sys.executable, "-m", "horovod_llm.worker", config_path,
    ]  # fmt: skip


# horovodrun's launcher prints this line for each rank that ends with a non-zero status,
# in the order it sees them end (horovod/runner/gloo_run.py).
_HOROVODRUN_EXIT = re.compile(r"^Process (\d+) exit with status code (-?\d+)\.$")


def horovodrun_exit(line: str, order: int) -> RankExit | None:
    """A RankExit from one line of horovodrun's output, if it is an exit report."""
    match = _HOROVODRUN_EXIT.match(line.strip())
    return RankExit(int(match.group(1)), int(match.group(2)), float(order)) if match else None


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants, whatever their process groups."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()

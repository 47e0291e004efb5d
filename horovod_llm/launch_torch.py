"""train.launcher=torch_distributor: one rank per Spark task through Spark's own
TorchDistributor (pyspark.ml.torch, in Spark 3.4 and later, so in EMR 7.x), which runs
torchrun in each task of a barrier stage. The ranks use torch.distributed with Gloo
(comm.py) and the same worker as every other launcher; nothing here needs Horovod.
"""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout

from horovod_llm.config import RunConfig, to_dict
from horovod_llm.errors import JobFailed
from horovod_llm.launch import spark_ranks
from horovod_llm.rank_failures import RankExit, job_failure
from horovod_llm.spark import is_local
from horovod_llm.train import rank_entry

log = logging.getLogger(__name__)


def torch_distributor_rank(config_values: dict, launch_info: dict) -> dict:
    """A rank, in the process torchrun starts in a Spark task."""
    if launch_info.get("gloo_iface"):
        # Gloo's own setting; without it Gloo uses the address the host name resolves
        # to, which cluster.check_hosts has checked other hosts can reach.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", launch_info["gloo_iface"])
    return rank_entry(config_values, launch_info)


def run_with_torch_distributor(config: RunConfig, spark=None) -> dict:
    from pyspark.ml.torch.distributor import TorchDistributor

    config, context, launch_info = spark_ranks(config, spark, "torch_distributor")
    tc, local = config.train, is_local(context.master)
    launch_info["gloo_iface"] = "lo" if local else ",".join(tc.nics) or None
    distributor = TorchDistributor(num_processes=tc.num_proc, local_mode=False, use_gpu=False)
    log.info("starting %d ranks with Spark's TorchDistributor (torch.distributed, Gloo%s)", tc.num_proc, ", loopback" if local else "")
    exits = RankExitLog(sys.stderr)
    try:
        # The ranks' lines come back on stderr (stdout carries generated text only), where
        # torchrun's reports of its rank's exit are read.
        with redirect_stdout(sys.stderr), redirect_stderr(exits), spark_task_failures_quiet(context):
            return distributor.run(torch_distributor_rank, to_dict(config), launch_info)
    except Exception as exc:
        if "TorchDistributor failed" not in str(exc):
            raise
        failure = job_failure(exits.exits, "TorchDistributor") or JobFailed(
            "a TorchDistributor training task failed before its rank reported an exit status: see the task logs above"
        )
        raise failure from None


# torchrun's report of a failed rank, which TorchDistributor streams to the driver among
# the rank's lines: "  rank      : 1 (local_rank: 0)" then "  exitcode  : -9 (pid: 1234)".
_TORCHRUN_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)\s*\(local_rank")
_TORCHRUN_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)")


class RankExitLog(io.TextIOBase):
    """The driver's stderr, passed through, recording each rank exit torchrun reports
    in the order they arrive. TorchDistributor's wrapper drops torchrun's exit status
    and Spark names only a failed task, so these reports are what tells a killed rank
    from the one that only lost it."""

    def __init__(self, stream):
        super().__init__()
        self.stream, self.exits, self._rank, self._partial = stream, [], None, ""

    def write(self, text: str) -> int:
        self.stream.write(text)
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._read(line)
        return len(text)

    def _read(self, line: str) -> None:
        rank, status = _TORCHRUN_RANK.match(line), _TORCHRUN_EXIT.match(line)
        if rank:
            self._rank = int(rank.group(1))
        elif status and self._rank is not None:
            if all(e.rank != self._rank for e in self.exits):
                self.exits.append(RankExit(self._rank, int(status.group(1)), float(len(self.exits))))
            self._rank = None

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return self.stream.isatty()


# Spark logs every failed task of the barrier stage with its Python and Java stack traces,
# after the ranks' own lines have said what went wrong; this module reports the failure
# in one line. Driver-side loggers (and, in local mode, the executor's).
_TASK_FAILURE_LOGGERS = (
    "org.apache.spark.scheduler.TaskSetManager",
    "org.apache.spark.scheduler.DAGScheduler",
    "org.apache.spark.executor.Executor",
    "org.apache.spark.sql.execution.python",
    "org.apache.spark.api.python",
)


@contextmanager
def spark_task_failures_quiet(context) -> Iterator[None]:
    jvm = context._jvm
    log4j = jvm.org.apache.logging.log4j
    saved = {name: log4j.LogManager.getLogger(name).getLevel() for name in _TASK_FAILURE_LOGGERS}
    for name in _TASK_FAILURE_LOGGERS:
        log4j.core.config.Configurator.setLevel(name, log4j.Level.OFF)
    try:
        yield
    finally:
        # A failed stage's other tasks are killed after the job has failed: their
        # reports come a moment later.
        deadline = time.monotonic() + 10
        while _running_tasks(context) and time.monotonic() < deadline:
            time.sleep(0.2)
        for name, level in saved.items():
            log4j.core.config.Configurator.setLevel(name, level)


def _running_tasks(context) -> int:
    return sum(info.numRunningTasks() for info in context._jsc.sc().statusTracker().getExecutorInfos())

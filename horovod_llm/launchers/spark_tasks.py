"""What the launchers whose ranks are Spark tasks share (Horovod on Spark,
TorchDistributor): the config their ranks get, the launch's description, where ranks
reach the driver, waiting out a lost host before a restart, and Spark's own reports of
a failed task kept off the terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from horovod_llm.config import RunConfig

import dataclasses
import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

from horovod_llm import progress
from horovod_llm.launchers.base import LOOPBACK, Launcher
from horovod_llm.launchers.cluster import check_for_ranks, executors, task_cpus
from horovod_llm.spark import is_local, spark_session

log = logging.getLogger(__name__)


class SparkTaskLauncher(Launcher):
    on_spark_tasks = True
    # Rank 0 draws a progress bar where its output reaches the terminal as it is written.
    live_rank_output_locally = False

    def prepare(self, config: RunConfig, spark) -> tuple[RunConfig, object, dict]:
        """The config the ranks get (threads, progress), the SparkContext, and what the
        summary records of the launch. Each rank is one Spark task and all must run at
        once (Horovod would otherwise wait out its whole start timeout, a barrier stage
        for good), and ranks on other hosts must reach each other: checked here."""
        session = spark or spark_session(config.spark)
        tc, context = config.train, session.sparkContext
        local = is_local(context.master)
        check_for_ranks(context, tc)
        if not tc.threads_per_rank:
            # A cluster gives each rank spark.task.cpus cores. Locally all ranks share this
            # machine (elastic ranks each look like a host of their own to Horovod, so its
            # local size cannot tell).
            from horovod_llm.training.job import threads_for_rank

            cpus = threads_for_rank(0, tc.num_proc) if local else task_cpus(context)
            config = dataclasses.replace(config, train=dataclasses.replace(tc, threads_per_rank=cpus))
        # A cluster's rank output reaches the driver in chunks, TorchDistributor's line by
        # line, where a bar's carriage returns would end no line.
        live = local and self.live_rank_output_locally
        config = dataclasses.replace(config, progress=progress.rank_setting(output_is_live=live))
        launch_info = self.launch_info(
            spark_master=context.master,
            # the driver is listed among the block managers; in local mode it is the executor
            executors=max(1, context._jsc.sc().getExecutorMemoryStatus().size() - (0 if local else 1)),
            task_cpus=task_cpus(context),
            default_parallelism=context.defaultParallelism,
        )
        return config, context, launch_info

    def before_restart(self, config: RunConfig, spark, lost_host: str | None) -> None:
        """Nothing trains while Spark has not yet noticed a lost host: the stall bound
        applies to this wait too."""
        if lost_host:
            wait_until_dropped(spark or spark_session(config.spark), lost_host, config.train.stall_timeout or config.train.start_timeout)


def driver_address(context) -> str:
    """Where the ranks reach this driver: loopback locally, spark.driver.host (which
    Spark's executors reach) on a cluster."""
    return LOOPBACK if is_local(context.master) else context.getConf().get("spark.driver.host")


def spark_host(host_hash: str) -> str:
    """The host name in Horovod on Spark's host hash ('<host name>-<md5 hex>')."""
    return re.sub(r"-[0-9a-f]{32}$", "", host_hash)


def wait_until_dropped(spark, host: str, timeout_s: float) -> None:
    """Wait (up to `timeout_s`) until Spark lists no executor on a host that stopped
    answering. Spark notices only after its own timeouts (a standalone worker's 60 s
    heartbeat timeout, checked every minute; YARN's node expiry), and until then it may
    place a restarted rank on the lost executor, where it would never start."""
    context = spark.sparkContext

    def lost() -> set[str]:  # by id: a replacement executor on the same host is welcome
        return {e.id for e in executors(context) if e.host == host}

    on_host = lost()
    if is_local(context.master) or not on_host:
        return
    log.info("waiting up to %d s for Spark to drop the executors of the lost host %s before restarting", timeout_s, host)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and on_host & lost():
        time.sleep(2.0)
    if on_host & lost():
        log.warning("Spark still lists executors on %s: restarting anyway", host)


# Spark logs every failed task of a barrier stage with its Python and Java stack traces,
# after the ranks' own lines have said what went wrong; the launcher reports the failure
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

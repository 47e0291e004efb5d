"""Building the SparkSession: local mode stays on loopback, clusters keep their settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from horovod_llm.config import SparkConfig

import logging
import os
import sys

log = logging.getLogger(__name__)


def is_local(master: str) -> bool:
    return master.startswith("local")


def spark_session(config: SparkConfig, extra_conf: dict[str, str] | None = None):
    """The SparkSession for this process (created on first use, then reused)."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName(config.app_name)
    if is_local(config.master):
        # Local mode: bind loopback only (Spark otherwise picks the machine's external
        # interface) and run Python workers with this interpreter, which holds the stack.
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = (
            builder.master(config.master)
            .config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.driver.memory", config.driver_memory)
        )
    elif config.master:
        builder = builder.master(config.master)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    for key, value in session_settings(config, extra_conf).items():
        builder = builder.config(key, str(value))
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    log.info("Spark %s, master %s, default parallelism %d", session.version, session.sparkContext.master, session.sparkContext.defaultParallelism)
    return session


# A local session's JVM is the driver and every executor, and lives for one command: its
# work is mostly start-up and the first run of each query, which C2's compilation costs
# more CPU than it saves. The client compiler alone took the demo corpus's preprocessing
# from 19.3 to 15.2 s (medians of 2, 5.3 MB, 2 cores of an Intel Xeon, issue 28) and left
# a 100 MB corpus's within its noise (27.4 and 30.3 s against 29.0 and 29.4). A cluster's
# long-lived executors keep the JVM's default.
LOCAL_DRIVER_JAVA_OPTIONS = "-XX:TieredStopAtLevel=1"


def session_settings(config: SparkConfig, extra_conf: dict[str, str] | None = None) -> dict[str, str]:
    """The settings given to the builder: ours, then the config's, then `extra_conf`.

    Spark's console progress bar is off unless the user turns it on: PySpark starts the
    JVM as a shell (`pyspark-shell`), for which Spark turns it on, and it then writes
    `[Stage N:> (0 + 2) / 2]` with carriage returns over the log lines, also into log
    files. progress.py draws one bar instead, on a terminal only.
    """
    ours = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.ui.showConsoleProgress": "false",
        "spark.python.daemon.module": "horovod_llm.spark_daemon",  # workers without archives to re-read per task (spark_daemon.py)
    }
    if is_local(config.master):
        from horovod_llm import jvm_archive

        ours["spark.driver.extraJavaOptions"] = f"{LOCAL_DRIVER_JAVA_OPTIONS} {jvm_archive.java_options()}".strip()
    return {**ours, **config.conf, **(extra_conf or {})}


def group_jobs(session, group: str) -> dict[int, list[int]]:
    """The jobs of a Spark job group: their stage ids, by job id."""
    tracker = session.sparkContext.statusTracker()
    jobs = ((job, tracker.getJobInfo(job)) for job in tracker.getJobIdsForGroup(group))
    return {job: list(info.stageIds) for job, info in jobs if info is not None}


def stage_metrics(session, stage_ids: set[int]) -> list[dict] | None:
    """Per-stage counters from Spark's status store (works with the UI off), of the
    given stages; None when the JVM API differs from Spark 3.5's.

    Reached through py4j because PySpark's StatusTracker exposes no shuffle or run-time
    figures. Metrics are a report, never a failure; but an unavailable report says so
    (None, and a warning), never a row of zeros that passes for a measurement.
    """
    from py4j.protocol import Py4JError

    context = session.sparkContext
    try:
        doubles = context._gateway.new_array(context._jvm.double, 0)
        stages = context._jsc.sc().statusStore().stageList(None, False, False, doubles, None)
        rows, iterator = [], stages.iterator()
        while iterator.hasNext():
            stage = iterator.next()
            if stage.stageId() in stage_ids:
                rows.append(
                    {
                        "stage_id": stage.stageId(),
                        "tasks": stage.numTasks(),
                        "shuffle_write_bytes": stage.shuffleWriteBytes(),
                        "shuffle_read_bytes": stage.shuffleReadBytes(),
                        "executor_run_ms": stage.executorRunTime(),
                    }
                )
        return rows
    except Py4JError as exc:
        log.warning("Spark stage metrics unavailable (%s): the manifest records none", str(exc).splitlines()[0][:200])
        return None


def summarize_stages(rows: list[dict] | None) -> dict:
    if rows is None:
        return {"spark_stages": None}
    return {
        "spark_stages": len(rows),
        "tasks": sum(r["tasks"] for r in rows),
        "shuffle_write_bytes": sum(r["shuffle_write_bytes"] for r in rows),
        "executor_run_seconds": round(sum(r["executor_run_ms"] for r in rows) / 1000.0, 3),
    }

"""Starting the ranks: `horovod.spark.run`, `horovodrun`, or one in-process rank.

Every launcher runs the same `train.train_worker` and returns rank 0's result.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path

from horovod_llm import checkpoint, dataset, layout, storage
from horovod_llm.config import RunConfig, to_dict, to_yaml
from horovod_llm.errors import JobFailed, UserError
from horovod_llm.spark import is_local, spark_session, task_slots
from horovod_llm.train import check_allreduce_op, check_word2vec_available, model_config, rank_entry, threads_for_rank, train_worker

log = logging.getLogger(__name__)


def horovodrun_command(config_path: str, num_proc: int, start_timeout: int) -> list[str]:
    """The documented local command: N ranks on this host, Gloo over loopback."""
    return [
        sys.executable, "-m", "horovod.runner.launch",
        "-np", str(num_proc), "-H", f"localhost:{num_proc}",
        "--gloo", "--network-interface", "lo", "--start-timeout", str(start_timeout),
        sys.executable, "-m", "horovod_llm.worker", config_path,
    ]  # fmt: skip


def preflight(config: RunConfig) -> None:
    """Refuse, in the driver and before any rank starts, what the ranks would refuse."""
    import horovod.torch as hvd

    manifest = dataset.read_manifest(config.output_url)
    check_word2vec_available(config, manifest)
    check_allreduce_op(config.train.allreduce_op, hvd)
    latest = checkpoint.checkpoint_to_resume(config.output_url, config.train.resume)
    if latest is not None:
        checkpoint.check_compatible(latest[1], dataclasses.asdict(model_config(config, manifest)), manifest["tokenizer"]["sha256"])


_RANK_EXIT = re.compile(r"Process name: (\S+)\s+Exit code: (-?\d+)")


def rank_failure(exc: Exception) -> JobFailed | None:
    """Horovod's "one or more processes exited" error, as one line naming the rank."""
    match = _RANK_EXIT.search(str(exc))
    if "exited with non-zero status" not in str(exc) or not match:
        return None
    rank, status = match.group(1), match.group(2)
    if status == "2":
        return JobFailed(f"training rank {rank} stopped on an error (its 'error:' line above says which) and Horovod stopped the others", retryable=False)
    return JobFailed(f"training rank {rank} exited with status {status} and Horovod stopped the others: see that rank's log above")


@contextmanager
def horovod_job_cancellation_logged():
    """When a rank fails, horovod.spark.run cancels its Spark job group; its own thread
    waiting on that job then dies with a Py4JJavaError, and Python would print the whole
    Java stack trace to stderr before the one-line failure this module reports anyway.
    That one exception is logged at debug level instead; any other goes to the hook."""
    previous = threading.excepthook

    def hook(args) -> None:
        if "cancelled job group horovod.spark" in str(args.exc_value):
            log.debug("horovod's Spark job was cancelled: %s", str(args.exc_value).splitlines()[0])
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def run_with_spark(config: RunConfig, spark=None) -> dict:
    import horovod.spark

    session = spark or spark_session(config.spark)
    tc = config.train
    slots = task_slots(session)
    # Each rank is one Spark task and all must run at once; Horovod would otherwise
    # wait out its whole start timeout before failing.
    if slots < tc.num_proc:
        raise UserError(
            f"train.num_proc={tc.num_proc} ranks need {tc.num_proc} Spark task slots at once, but only {slots} are available "
            f"(default parallelism {session.sparkContext.defaultParallelism} / spark.task.cpus): lower train.num_proc or give Spark more cores"
        )
    local = is_local(session.sparkContext.master)
    if not tc.threads_per_rank:
        # A cluster gives each rank spark.task.cpus cores. Locally all ranks share this
        # machine (elastic ranks each look like a host of their own to Horovod, so its
        # local size cannot tell).
        cpus = threads_for_rank(0, tc.num_proc) if local else int(session.sparkContext.getConf().get("spark.task.cpus", "1"))
        config = dataclasses.replace(config, train=dataclasses.replace(tc, threads_per_rank=cpus))
    context = session.sparkContext
    launch_info = {
        "launcher": "spark",
        "spark_master": context.master,
        # the driver is listed among the block managers; in local mode it is the executor
        "executors": max(1, context._jsc.sc().getExecutorMemoryStatus().size() - (0 if local else 1)),
        "task_cpus": int(context.getConf().get("spark.task.cpus", "1")),
        "default_parallelism": context.defaultParallelism,
    }
    common = {
        "args": (to_dict(config), launch_info),
        "start_timeout": tc.start_timeout,
        "nics": {"lo"} if local else None,
        # Local mode: ranks inherit the driver's terminal, so their progress shows live
        # (Horovod's capture forwards output in 64 KiB chunks). On a cluster their logs
        # are collected by the driver.
        "stdout": None if local else sys.stderr,
        "stderr": None if local else sys.stderr,
        "verbose": 1,
    }
    try:
        # horovod.spark.run joins its Spark thread before returning or raising.
        with horovod_job_cancellation_logged():
            if tc.elastic:
                check_task_retries(context)
                log.info(
                    "starting %d..%d elastic Horovod ranks with horovod.spark.run_elastic (Gloo%s)", tc.min_proc, tc.num_proc, ", loopback" if local else ""
                )
                results = horovod.spark.run_elastic(
                    rank_entry, num_proc=tc.num_proc, min_num_proc=tc.min_proc, max_num_proc=tc.num_proc, elastic_timeout=tc.elastic_timeout, **common
                )
            else:
                log.info("starting %d Horovod ranks with horovod.spark.run (Gloo%s)", tc.num_proc, ", loopback" if local else "")
                results = horovod.spark.run(rank_entry, num_proc=tc.num_proc, use_gloo=True, **common)
    except RuntimeError as exc:
        failure = rank_failure(exc)
        if failure is None:
            raise
        raise failure from None
    return next(r for r in results if "summary" in r)


_LOCAL_WITH_RETRIES = re.compile(r"^local\[[^,\]]+,\s*(\d+)\]$")


def check_task_retries(context) -> None:
    """Elastic Horovod on Spark brings a lost rank back by Spark re-running its task,
    which local mode only does with a failure count in the master URL."""
    master = context.master
    match = _LOCAL_WITH_RETRIES.match(master)
    retries = int(match.group(1)) if match else int(context.getConf().get("spark.task.maxFailures", "1" if is_local(master) else "4"))
    if retries < 2:
        raise UserError(
            f"train.elastic=true needs Spark to re-run a lost rank's task, but {master} allows no retry: "
            "use spark.master=local[N,4] locally, or spark.task.maxFailures of 2 or more on a cluster"
        )


def run_with_horovodrun(config: RunConfig) -> dict:
    tc = config.train
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "resolved.yaml"
        config_path.write_text(to_yaml(config))
        command = horovodrun_command(str(config_path), tc.num_proc, tc.start_timeout)
        log.info("running: %s", " ".join(command))
        completed = subprocess.run(command, stdout=sys.stderr)
    if completed.returncode != 0:
        raise JobFailed(f"horovodrun exited with status {completed.returncode}: see the rank logs above")
    return {"rank": 0, "summary": storage.read_json(storage.join(layout.stats_url(config.output_url), "summary.json"))}


def launch_training(config: RunConfig, spark=None) -> dict:
    """Train with the configured launcher; rank 0's result (with its summary).

    A failed job (a rank killed, a lost process) is started again from the latest
    complete checkpoint up to `train.max_restarts` times, as torchrun's --max-restarts
    does, so a lost rank costs at most `train.checkpoint_interval` steps.
    """
    preflight(config)
    restarts = config.train.max_restarts
    for attempt in range(restarts + 1):
        try:
            return _launch_once(config, spark)
        except JobFailed as exc:
            if not exc.retryable or attempt == restarts:
                raise
            latest = checkpoint.complete_checkpoints(config.output_url)
            origin = f"checkpoint step {latest[-1][0]}" if latest else "the start"
            log.warning("training failed (%s); restart %d of %d from %s", exc, attempt + 1, restarts, origin)
    raise AssertionError("unreachable")


def _launch_once(config: RunConfig, spark=None) -> dict:
    launcher = config.train.launcher
    if launcher == "spark":
        return run_with_spark(config, spark)
    if launcher == "horovodrun":
        return run_with_horovodrun(config)
    if config.train.num_proc != 1:
        raise UserError(f"train.launcher=local runs one rank, but train.num_proc={config.train.num_proc}: set train.num_proc=1")
    return train_worker(to_dict(config), {"launcher": "local"})

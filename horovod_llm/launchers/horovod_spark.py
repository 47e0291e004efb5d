"""train.launcher=spark: `horovod.spark.run` (or `run_elastic`), one Horovod rank per
Spark task, Gloo between them; and how this launcher learns every rank's exit."""

from __future__ import annotations

import functools
import logging
import re
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

from horovod_llm.errors import UserError
from horovod_llm.launchers.cluster import executor_hosts
from horovod_llm.launchers.exits import SILENT_STATUS, RankExit, job_failed
from horovod_llm.launchers.horovod_env import horovod_bound_to_loopback, require_horovod
from horovod_llm.launchers.spark_tasks import SparkTaskLauncher, driver_address, spark_host
from horovod_llm.spark import is_local

log = logging.getLogger(__name__)


class HorovodOnSpark(SparkTaskLauncher):
    name = "spark"
    backend = "horovod"
    elastic = True
    needs_horovod = True
    # Local mode: ranks inherit the driver's terminal, so their progress shows live.
    live_rank_output_locally = True

    def task_gpus(self) -> list[str]:
        # What the rank's task service read from its TaskContext.resources() before
        # Horovod ran the rank's function.
        from horovod.spark.task import get_available_devices

        return list(get_available_devices())

    def run(self, worker, config, spark=None) -> dict:
        require_horovod(self.name)
        import horovod.spark

        from horovod_llm.launchers.rank_process import rank_process
        from horovod_llm.launchers.secret_channel import serving_secrets
        from horovod_llm.launchers.watchdog import stall_guard
        from horovod_llm.redaction import redacted_dict, secret_values

        config, context, launch_info = self.prepare(config, spark)
        rank = functools.partial(rank_process, worker, peer_lost_grace_s=self.peer_lost_grace_s)
        tc, local = config.train, is_local(context.master)
        quiet_lost_task_services()
        common = {
            # Redacted: the ranks fetch the hidden values from this driver (secret_channel.py).
            "args": (redacted_dict(config), launch_info),
            "start_timeout": tc.start_timeout,
            # A cluster: train.nics, or (empty) the interfaces Horovod finds every host reaches.
            "nics": {"lo"} if local else set(tc.nics) or None,
            # Local mode: ranks inherit the driver's terminal, so their progress shows live
            # (Horovod's capture forwards output in 64 KiB chunks). On a cluster their logs
            # are collected by the driver.
            "stdout": None if local else sys.stderr,
            "stderr": None if local else sys.stderr,
            "verbose": 1,
        }
        try:
            # horovod.spark.run joins its Spark thread before returning or raising.
            loopback = horovod_bound_to_loopback(context) if local else nullcontext()
            watched = stall_guard(tc.stall_timeout, driver_address(context), abort=context.cancelAllJobs, start_allowance_s=tc.start_timeout)
            secrets = serving_secrets(secret_values(config), None if local else driver_address(context))
            with (
                watched as watchdog,
                secrets as secrets_at,
                loopback,
                horovod_job_cancellation_logged(),
                rank_exits_recorded(None if local else context) as exits,
            ):
                launch_info["watchdog"], launch_info["secrets"] = watchdog and watchdog.address, secrets_at
                if tc.elastic:
                    check_task_retries(context)
                    log.info(
                        "starting %d..%d elastic Horovod ranks with horovod.spark.run_elastic (Gloo%s)", tc.min_proc, tc.num_proc, ", loopback" if local else ""
                    )
                    results = horovod.spark.run_elastic(
                        rank, num_proc=tc.num_proc, min_num_proc=tc.min_proc, max_num_proc=tc.num_proc, elastic_timeout=tc.elastic_timeout, **common
                    )
                else:
                    log.info("starting %d Horovod ranks with horovod.spark.run (Gloo%s)", tc.num_proc, ", loopback" if local else "")
                    results = horovod.spark.run(rank, num_proc=tc.num_proc, use_gloo=True, **common)
        except RuntimeError as exc:
            if "exited with non-zero status" not in str(exc):  # Horovod's report of a failed rank
                raise
            raise job_failed(exits, "Horovod", f"{str(exc).strip().splitlines()[0]}: see the rank logs above") from None
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


# After one rank fails, every other rank's collectives fail within seconds (Gloo's
# timeout, 30 s, when a host vanishes without closing its connections), and its exit
# status comes back. A rank still silent this long after the first failure is taken
# for lost with its host.
SILENT_AFTER_S = 15.0
# What Horovod's rsh returns when its connection to the rank's task service broke: None
# (the long poll swallowed the error) or -1 (it printed it). No rank stops on SIGHUP here.
LOST_CONNECTION = (None, -1)


@contextmanager
def rank_exits_recorded(context=None, silent_after_s: float = SILENT_AFTER_S) -> Iterator[list[RankExit]]:
    """Every rank's exit status while `horovod.spark.run` (or `run_elastic`) runs.

    Horovod's error names only the first rank to *exit*, often a rank that merely lost
    its peer (exits.py). Its launcher waits for every rank and times each exit;
    wrapping the function it runs each rank with records them all. A narrow override of
    horovod 0.28.1 (pinned; its spark.gloo_run calls launch_gloo and launch_gloo_elastic
    by these module-level names), undone on the way out; tests/reliability/
    test_rank_failure.py and tests/cluster/test_host_loss_*.py guard it.

    Horovod waits for a rank's exit on a long poll to the task service of its host,
    which may never end when the host is gone without a word (a lost node, a cut link).
    Such a rank is recorded as SILENT_STATUS, with its host, as soon as Spark (given as
    `context`) has lost every executor on that host, or (not elastic) `silent_after_s`
    after another rank failed; the job then fails (or, elastic, goes on without it)
    instead of hanging. The poll's thread is left behind, blocked on its socket.
    """
    from horovod.spark import gloo_run as spark_gloo

    originals = spark_gloo.launch_gloo, spark_gloo.launch_gloo_elastic
    exits: list[RankExit] = []
    first_failed_at: list[float] = []
    hosts_at_start = executor_hosts(context) if context is not None else set()

    def host_lost(host: str) -> bool:
        # Only a host Spark named at the start counts: a cluster whose executor host
        # names differ from the ranks' own never marks a rank lost this way.
        return host in hosts_at_start and host not in executor_hosts(context)

    def watched(exec_command, elastic: bool):
        def exec_recorded(rank_command, slot_info, events):
            host = spark_host(slot_info.hostname)
            outcome: list[tuple[int | None, float]] = []
            waiter = threading.Thread(target=lambda: outcome.append(exec_command(rank_command, slot_info, events)), daemon=True)
            waiter.start()
            checked = time.monotonic()
            while waiter.is_alive():
                waiter.join(0.5)
                now = time.monotonic()
                # Elastic ranks outlive a failed peer (they reset and go on): only
                # Spark's loss of their host marks them lost.
                silent = not elastic and first_failed_at and now - first_failed_at[0] > silent_after_s
                if waiter.is_alive() and not silent and now - checked > 2.0:
                    silent, checked = host_lost(host), now
                if waiter.is_alive() and silent:
                    outcome.append((SILENT_STATUS, time.time()))
                    break
            status, at = outcome[0] if outcome else (None, time.time())
            if status in LOST_CONNECTION:
                status = SILENT_STATUS
            exits.append(RankExit(slot_info.rank, status, at, host))
            if status != 0 and not first_failed_at:
                first_failed_at.append(time.monotonic())
            return status, at

        return exec_recorded

    def launch_gloo(command, exec_command, *args):
        return originals[0](command, watched(exec_command, elastic=False), *args)

    def launch_gloo_elastic(command, exec_command, *args):
        return originals[1](command, watched(exec_command, elastic=True), *args)

    spark_gloo.launch_gloo, spark_gloo.launch_gloo_elastic = launch_gloo, launch_gloo_elastic
    try:
        yield exits
    finally:
        spark_gloo.launch_gloo, spark_gloo.launch_gloo_elastic = originals


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


def _in_task_service_client(traceback) -> bool:
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename.endswith("horovod/runner/common/service/task_service.py"):
            return True
        traceback = traceback.tb_next
    return False


def quiet_lost_task_services() -> None:
    """Horovod's threads that forward a rank's output, or abort its command, die with a
    socket error when the rank's host stopped answering, often after horovod.spark.run
    has returned; each printed two tracebacks. The launcher reports that host in one
    line, so these go to the debug log. Installed once for the process."""
    previous = threading.excepthook
    if getattr(previous, "quiets_task_services", False):
        return

    def hook(args) -> None:
        if isinstance(args.exc_value, OSError) and _in_task_service_client(args.exc_traceback):
            log.debug("horovod could not reach a rank's task service: %r", args.exc_value)
            return
        previous(args)

    hook.quiets_task_services = True
    threading.excepthook = hook

"""Starting the ranks: `horovod.spark.run`, `horovodrun`, Spark's TorchDistributor
(launch_torch.py), or one in-process rank.

Every launcher runs the same `train.train_worker` and returns rank 0's result.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from horovod_llm import checkpoint, launchers, layout, progress, recipe, storage
from horovod_llm.cluster import check_for_ranks, executor_hosts, executors, task_cpus
from horovod_llm.comm import backend_for, horovod_installed
from horovod_llm.config import RunConfig, redacted_dict, redacted_yaml, secret_values, to_dict, validate
from horovod_llm.dataset import check_only_our_files
from horovod_llm.errors import JobFailed, UserError
from horovod_llm.job import check_job, model_config, threads_for_rank
from horovod_llm.manifest import read_manifest
from horovod_llm.rank_failures import SILENT_STATUS, RankExit, horovodrun_exit, job_failure
from horovod_llm.secret_channel import SECRETS_AT_ENV, serving_secrets
from horovod_llm.spark import is_local, spark_session
from horovod_llm.train import rank_entry, train_worker
from horovod_llm.watchdog import WATCHDOG_ENV, stall_guard

log = logging.getLogger(__name__)


def horovodrun_command(config_path: str, num_proc: int, start_timeout: int) -> list[str]:
    """The documented local command: N ranks on this host, Gloo over loopback."""
    return [
        sys.executable, "-m", "horovod.runner.launch",
        "-np", str(num_proc), "-H", f"localhost:{num_proc}",
        "--gloo", "--network-interface", "lo", "--start-timeout", str(start_timeout),
        sys.executable, "-m", "horovod_llm.worker", config_path,
    ]  # fmt: skip


def horovod_mpi_built(launcher: str) -> bool:
    """Whether this launcher's ranks have Horovod built with MPI (Adasum needs it); a
    launcher that needs Horovod where it is not installed is refused here."""
    if backend_for(launcher) != "horovod":
        return False
    if not horovod_installed():
        raise UserError(
            f"train.launcher={launcher} needs Horovod, which is not installed here: "
            "run 'make setup' (scripts/install-stack.sh builds it), or set train.launcher=torch_distributor"
        )
    import horovod.torch as hvd

    return hvd.mpi_built()


def preflight(config: RunConfig) -> RunConfig:
    """The config with the recipe resolved for the dataset; refuse, in the driver and
    before any rank starts, what the ranks would refuse."""
    validate(config)  # a config built in code, not loaded, is checked here
    mpi_built = horovod_mpi_built(config.train.launcher)
    manifest = read_manifest(config.output_url)
    for split in layout.SPLITS:  # what every rank would refuse, refused once, here
        check_only_our_files(config.output_url, split)
    config = recipe.resolve(config, manifest.corpus.bytes)
    check_job(config, manifest, mpi_built)
    latest = checkpoint.checkpoint_to_resume(config.output_url, config.train.resume)
    if latest is not None:
        checkpoint.check_compatible(latest[1], dataclasses.asdict(model_config(config, manifest)), manifest.tokenizer.sha256)
    return config


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
    its peer (rank_failures.py). Its launcher waits for every rank and times each exit;
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


def driver_address(context) -> str:
    """Where the ranks reach this driver: loopback locally, spark.driver.host (which
    Spark's executors reach) on a cluster."""
    return LOOPBACK if is_local(context.master) else context.getConf().get("spark.driver.host")


def spark_host(host_hash: str) -> str:
    """The host name in Horovod on Spark's host hash ('<host name>-<md5 hex>')."""
    return re.sub(r"-[0-9a-f]{32}$", "", host_hash)


# Read by the find_port of the Horovod that scripts/install-stack.sh builds: its servers
# (the Gloo rendezvous store, which has no authentication, among them) bind this address
# instead of every interface.
BIND_ADDRESS_ENV = "HOROVOD_LLM_BIND_ADDRESS"
LOOPBACK = "127.0.0.1"


def horovod_honours_bind_address() -> bool:
    """Whether the installed Horovod carries the bind-address patch of install-stack.sh."""
    import inspect

    from horovod.runner.util import network

    return BIND_ADDRESS_ENV in inspect.getsource(network.find_port)


@contextmanager
def horovod_bound_to_loopback(context):
    """Local mode: Horovod's servers bind loopback, in this process (rendezvous, driver
    service) and in the Spark tasks horovod.spark.run starts (task services), whose
    Python workers get the variable through the SparkContext's executor environment."""
    if not horovod_honours_bind_address():
        log.warning("this Horovod lacks the bind-address patch, so its rendezvous listens on every interface: run 'make setup' to rebuild it")
    saved = os.environ.get(BIND_ADDRESS_ENV), context.environment.get(BIND_ADDRESS_ENV)
    os.environ[BIND_ADDRESS_ENV] = context.environment[BIND_ADDRESS_ENV] = LOOPBACK
    try:
        yield
    finally:
        for mapping, value in zip((os.environ, context.environment), saved, strict=True):
            if value is None:
                mapping.pop(BIND_ADDRESS_ENV, None)
            else:
                mapping[BIND_ADDRESS_ENV] = value


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


def spark_ranks(config: RunConfig, spark, launcher: str) -> tuple[RunConfig, object, dict]:
    """For ranks started as Spark tasks: the config they get (threads, progress), the
    SparkContext, and what the summary records of the launch. Each rank is one Spark task
    and all must run at once (Horovod would otherwise wait out its whole start timeout, a
    barrier stage for good), and ranks on other hosts must reach each other: checked here."""
    session = spark or spark_session(config.spark)
    tc, context = config.train, session.sparkContext
    local = is_local(context.master)
    check_for_ranks(context, tc)
    if not tc.threads_per_rank:
        # A cluster gives each rank spark.task.cpus cores. Locally all ranks share this
        # machine (elastic ranks each look like a host of their own to Horovod, so its
        # local size cannot tell).
        cpus = threads_for_rank(0, tc.num_proc) if local else task_cpus(context)
        config = dataclasses.replace(config, train=dataclasses.replace(tc, threads_per_rank=cpus))
    # Rank 0 draws a progress bar where its output reaches this terminal as it is written:
    # Horovod's ranks in local mode. A cluster's rank output reaches the driver in chunks,
    # TorchDistributor's line by line, where a bar's carriage returns would end no line.
    live = local and launcher == "spark"
    config = dataclasses.replace(config, progress=progress.rank_setting(output_is_live=live))
    launch_info = {
        "launcher": launcher,
        "spark_master": context.master,
        # the driver is listed among the block managers; in local mode it is the executor
        "executors": max(1, context._jsc.sc().getExecutorMemoryStatus().size() - (0 if local else 1)),
        "task_cpus": task_cpus(context),
        "default_parallelism": context.defaultParallelism,
    }
    return config, context, launch_info


def run_with_spark(config: RunConfig, spark=None) -> dict:
    import horovod.spark

    config, context, launch_info = spark_ranks(config, spark, "spark")
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
        with watched as watchdog, secrets as secrets_at, loopback, horovod_job_cancellation_logged(), rank_exits_recorded(None if local else context) as exits:
            launch_info["watchdog"], launch_info["secrets"] = watchdog and watchdog.address, secrets_at
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
        # "exited with non-zero status": Horovod's report of a failed rank
        failure = job_failure(exits) if "exited with non-zero status" in str(exc) else None
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


def run_with_horovodrun(config: RunConfig) -> dict:
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
        raise job_failure(exits, "horovodrun") or JobFailed(f"horovodrun exited with status {returncode}: see the rank logs above")
    return {"rank": 0, "summary": storage.read_json(storage.join(layout.stats_url(config.output_url), "summary.json"))}


def launch_training(config: RunConfig, spark=None) -> dict:
    """Train with the configured launcher; rank 0's result (with its summary).

    A failed job (a rank killed, a lost process) is started again from the latest
    complete checkpoint up to `train.max_restarts` times, as torchrun's --max-restarts
    does, so a lost rank costs at most `train.checkpoint_interval` steps.
    """
    config = preflight(config)
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
            if exc.lost_host and launchers.launcher(config.train.launcher).on_spark_tasks:
                # Nothing trains meanwhile: the stall bound applies to this wait too.
                wait_until_dropped(spark or spark_session(config.spark), exc.lost_host, config.train.stall_timeout or config.train.start_timeout)
    raise AssertionError("unreachable")


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


def _launch_once(config: RunConfig, spark=None) -> dict:
    launcher = config.train.launcher
    if launcher == "spark":
        return run_with_spark(config, spark)
    if launcher == "horovodrun":
        return run_with_horovodrun(config)
    if launcher == "torch_distributor":
        from horovod_llm.launch_torch import run_with_torch_distributor

        return run_with_torch_distributor(config, spark)
    if config.train.num_proc != 1:
        raise UserError(f"train.launcher=local runs one rank, but train.num_proc={config.train.num_proc}: set train.num_proc=1")
    # The rank is this process: its bar is drawn where the driver's would be. A rank
    # points stdout at stderr (stdout carries generated text only); here that process is
    # the driver, whose stdout must come back for `run` to print its sample there.
    stdout = sys.stdout
    try:
        with stall_guard(config.train.stall_timeout, LOOPBACK) as watchdog:
            launch_info = {"launcher": "local", "watchdog": watchdog and watchdog.address}
            return train_worker(to_dict(dataclasses.replace(config, progress=progress.rank_setting(output_is_live=True))), launch_info)
    finally:
        sys.stdout = stdout

"""train.launcher=torch_distributor: one rank per Spark task through Spark's own
TorchDistributor (pyspark.ml.torch, in Spark 3.4 and later, so in EMR 7.x), which runs
torchrun in each task of a barrier stage. The ranks use torch.distributed with Gloo
(training/comm.py) and the same worker as every other launcher; nothing here needs
Horovod. How this launcher learns each rank's exit: torchrun's reports, read from the
ranks' lines (RankExitLog), and Spark's account of a lost executor.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import sys
import time
from contextlib import redirect_stderr, redirect_stdout

from horovod_llm.errors import UserError
from horovod_llm.launchers.cluster import executor_hosts, spark_schedules_gpus
from horovod_llm.launchers.exits import PEER_LOST_GRACE_S, PEER_LOST_STATUS, SILENT_STATUS, RankExit, job_failed
from horovod_llm.launchers.spark_tasks import SparkTaskLauncher, driver_address, spark_task_failures_quiet
from horovod_llm.spark import is_local

log = logging.getLogger(__name__)


class TorchDistributor(SparkTaskLauncher):
    name = "torch_distributor"
    backend = "torch"
    elastic = False
    needs_horovod = False
    # Spark reports the first of a barrier stage's tasks to fail and stops the others:
    # a rank that only lost a peer waits, so that the one that failed on its own is first.
    peer_lost_grace_s = PEER_LOST_GRACE_S

    def task_gpus(self) -> list[str]:
        # TorchDistributor(use_gpu=True) narrows each rank's CUDA_VISIBLE_DEVICES to the
        # GPUs of its task (use_gpu=False empties it).
        return [a for a in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if a]

    def run(self, worker, config, spark=None) -> dict:
        from pyspark.ml.torch.distributor import TorchDistributor as SparkTorchDistributor

        from horovod_llm.launchers.secret_channel import serving_secrets
        from horovod_llm.launchers.watchdog import stall_guard
        from horovod_llm.redaction import redacted_dict, secret_values

        config, context, launch_info = self.prepare(config, spark)
        tc, local = config.train, is_local(context.master)
        launch_info["gloo_iface"] = "lo" if local else ",".join(tc.nics) or None
        _bind_log_server_to_driver_host()
        # Spark hands each task its GPUs when it schedules them, and TorchDistributor passes
        # them on only with use_gpu (without, it hides every GPU from the ranks).
        task_amount = context.getConf().get("spark.task.resource.gpu.amount", "0")
        if not float(task_amount).is_integer():
            raise UserError(
                f"spark.task.resource.gpu.amount={task_amount}: TorchDistributor gives each rank whole GPUs: set a whole number (1), "
                "or use train.launcher=spark"
            )
        use_gpu = spark_schedules_gpus(context)
        if tc.device == "cuda" and not use_gpu:
            raise UserError(
                "train.device=cuda with train.launcher=torch_distributor needs Spark to schedule the GPUs (TorchDistributor hides them otherwise): "
                "set spark.conf.spark.task.resource.gpu.amount=1, with spark.executor.resource.gpu.amount on a cluster "
                "or spark.driver.resource.gpu.amount in local mode"
            )
        distributor = SparkTorchDistributor(num_processes=tc.num_proc, local_mode=False, use_gpu=use_gpu)
        log.info("starting %d ranks with Spark's TorchDistributor (torch.distributed, Gloo%s)", tc.num_proc, ", loopback" if local else "")
        exits = RankExitLog(sys.stderr)
        watched = stall_guard(tc.stall_timeout, driver_address(context), abort=context.cancelAllJobs, start_allowance_s=tc.start_timeout)
        # TorchDistributor pickles the arguments into a folder of each executor: redacted, and
        # the ranks fetch the hidden values from this driver (secret_channel.py).
        with watched as watchdog, serving_secrets(secret_values(config), None if local else driver_address(context)) as secrets_at:
            launch_info["watchdog"], launch_info["secrets"] = watchdog and watchdog.address, secrets_at
            try:
                # The ranks' lines come back on stderr (stdout carries generated text only), where
                # torchrun's reports of its rank's exit are read.
                with redirect_stdout(sys.stderr), redirect_stderr(exits), spark_task_failures_quiet(context):
                    rank = functools.partial(torch_distributor_rank, worker, peer_lost_grace_s=self.peer_lost_grace_s)
                    return distributor.run(rank, redacted_dict(config), launch_info)
            except Exception as exc:
                hosts = watchdog.hosts() if watchdog else {}
                if "TorchDistributor failed" in str(exc):
                    reported = exits.exits + unreported_ranks(exits.exits, tc.num_proc, hosts)
                elif _EXECUTOR_LOST.search(str(exc)):
                    # Spark dropped a host's executor (its heartbeat timeout) before torchrun
                    # reported anything: the ranks that ran there are the ones lost.
                    reported = exits.exits + ranks_on_lost_hosts(context, hosts)
                else:
                    raise
                raise job_failed(
                    reported, "TorchDistributor", "a TorchDistributor training task failed before its rank reported an exit status: see the task logs above"
                ) from None


def torch_distributor_rank(worker, config_values: dict, launch_info: dict, *, peer_lost_grace_s: float) -> dict:
    """A rank, in the process torchrun starts in a Spark task."""
    from horovod_llm.launchers.rank_process import rank_process

    if launch_info.get("gloo_iface"):
        # Gloo's own setting; without it Gloo uses the address the host name resolves
        # to, which cluster.check_hosts has checked other hosts can reach.
        os.environ.setdefault("GLOO_SOCKET_IFNAME", launch_info["gloo_iface"])
        os.environ.setdefault("NCCL_SOCKET_IFNAME", launch_info["gloo_iface"])  # NCCL's own, on CUDA
    return rank_process(worker, config_values, launch_info, peer_lost_grace_s=peer_lost_grace_s)


# How Spark words a stage failed by a lost executor (a host that stopped answering).
_EXECUTOR_LOST = re.compile(r"ExecutorLostFailure|worker lost|Lost executor")


def ranks_on_lost_hosts(context, hosts: dict[int, str], settle_s: float = 10.0) -> list[RankExit]:
    """The ranks (by their heartbeats' hosts) whose host no longer runs an executor, as
    lost, when some but not all are. Spark's status store learns of the removal from its listener bus, moments after
    the failure it causes: up to `settle_s` for it to show."""
    deadline = time.monotonic() + settle_s
    while True:
        live = {_short_name(host) for host in executor_hosts(context)}
        lost = [RankExit(rank, SILENT_STATUS, time.time(), host) for rank, host in sorted(hosts.items()) if _short_name(host) not in live]
        if 0 < len(lost) < len(hosts):
            return lost
        if time.monotonic() >= deadline:
            return []  # none gone, or all (names Spark and the ranks spell apart): unknown
        time.sleep(0.5)


def _short_name(host: str) -> str:
    """A host's name as gethostname() and Spark may differ in giving it: `ip-10-0-0-5`
    against `ip-10-0-0-5.ec2.internal`. (An address stays whole.)"""
    return host if host.replace(".", "").isdigit() else host.split(".", 1)[0]


def unreported_ranks(exits: list[RankExit], num_proc: int, hosts: dict[int, str]) -> list[RankExit]:
    """The ranks a failed stage heard nothing from, as lost with their hosts, when every
    rank that did report only lost a peer: a rank whose host vanished (a lost node, a cut
    link) reports nothing, and its torchrun with it. The heartbeats say where it ran."""
    if any(e.status not in (PEER_LOST_STATUS, 0) for e in exits):
        return []  # a rank failed on its own and said so: that one is named
    heard = {e.rank for e in exits}
    return [RankExit(rank, SILENT_STATUS, time.time(), hosts.get(rank, "unknown")) for rank in range(num_proc) if rank not in heard and rank in hosts]


def _bind_log_server_to_driver_host() -> None:
    """Make TorchDistributor's log server listen on spark.driver.host, not on every interface.

    pyspark 3.5's LogStreamingServer, which receives the ranks' lines and prints them on
    the driver, binds 0.0.0.0 whatever address it is given: anyone who can reach the
    driver could write into its log, and a local run listened beyond loopback. The same
    server, bound to the address it already takes (spark.driver.host: 127.0.0.1
    locally, the driver's cluster address on a cluster, which the executors reach).
    A narrow override of one method, since TorchDistributor builds the server itself.
    """
    import socketserver
    import threading

    from pyspark.ml.torch import distributor, log_communication

    if getattr(distributor.LogStreamingServer, "binds_driver_host", False):
        return

    class DriverHostLogServer(log_communication.LogStreamingServer):
        binds_driver_host = True

        def start(self, spark_host_address: str = "") -> None:
            if self.server:
                raise RuntimeError("Cannot start the server twice.")
            server = socketserver.ThreadingTCPServer((spark_host_address, 0), log_communication.WriteLogToStdout)
            server.is_active = True
            self.server, self.port = server, server.server_address[1]
            self.serve_thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": log_communication._SERVER_POLL_INTERVAL}, daemon=True)
            self.serve_thread.start()

        def shutdown(self) -> None:
            server = self.server
            super().shutdown()
            if server is not None:
                server.server_close()  # the listening socket, which the original's `with` closed

    distributor.LogStreamingServer = DriverHostLogServer


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

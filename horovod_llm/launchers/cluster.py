"""What the ranks need from a Spark cluster, checked before any rank starts.

Horovod on Spark runs one rank per task and needs all of them at once, each on
`spark.task.cpus` cores of one executor (and `spark.task.resource.gpu.amount` of its
GPUs, where Spark schedules GPUs); and ranks on different hosts must reach each
other at the addresses their host names resolve to. Both fail late and obscurely when
they do not hold (Horovod waits out its start timeout; Gloo times out connecting), so
the driver checks them first and refuses in one line.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import time
from dataclasses import dataclass

from horovod_llm.errors import UserError
from horovod_llm.spark import is_local

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Executor:
    id: str
    host: str
    cores: int
    gpus: int = 0  # GPU addresses Spark gave it (spark.executor.resource.gpu.amount)


def _gpus(summary) -> int:
    found = summary.resources().get("gpu")  # a Scala Option of a ResourceInformation
    return len(found.get().addresses()) if found.isDefined() else 0


def executors(context) -> list[Executor]:
    """The active executors and their cores, from Spark's status store (PySpark's
    StatusTracker has no core counts). Local mode's one executor is the driver."""
    local = is_local(context.master)
    listed, found = context._jsc.sc().statusStore().executorList(True).iterator(), []
    while listed.hasNext():
        summary = listed.next()
        if (summary.id() == "driver") == local:
            found.append(Executor(summary.id(), summary.hostPort().rsplit(":", 1)[0], summary.totalCores(), _gpus(summary)))
    return found


def executor_hosts(context) -> set[str]:
    return {e.host for e in executors(context)}


def task_cpus(context) -> int:
    return max(int(context.getConf().get("spark.task.cpus", "1")), 1)


def task_gpus(context) -> float:
    """GPUs each task takes (spark.task.resource.gpu.amount; 0: Spark schedules none).
    Local mode schedules no task resources, whatever the setting."""
    if is_local(context.master):
        return 0.0
    return max(float(context.getConf().get("spark.task.resource.gpu.amount", "0")), 0.0)


def spark_schedules_gpus(context) -> bool:
    """Whether Spark gives each task GPUs as TorchDistributor reads them: a whole task GPU
    amount, and in local mode the driver's GPUs too (which it then shares out)."""
    task_amount = float(context.getConf().get("spark.task.resource.gpu.amount", "0"))
    if is_local(context.master) and float(context.getConf().get("spark.driver.resource.gpu.amount", "0")) <= 0:
        return False
    return task_amount >= 1


def executor_slots(executor: Executor, cpus: int, gpus: float = 0.0) -> int:
    """Tasks of `cpus` cores (and `gpus` GPUs, when Spark schedules them) one executor
    runs at once: whole slots of both (a fraction of a GPU shares it between tasks)."""
    slots = executor.cores // cpus
    if gpus > 0:
        slots = min(slots, int(executor.gpus / gpus + 1e-9))
    return slots


def task_slots(found: list[Executor], cpus: int, gpus: float = 0.0) -> int:
    """Tasks that can run at once: whole slots per executor (executors of 10 and 6 cores
    give 2 + 1 slots of 4 cores, not 16 // 4; one of 4 cores and 1 GPU gives one slot of
    a GPU each)."""
    return sum(executor_slots(e, cpus, gpus) for e in found)


def check_task_slots(context, num_proc: int, wait_s: float = 0.0) -> int:
    """Refuse, with the numbers, a rank count the executors cannot run at once; return
    the slot count. On a cluster, executors still registering get `wait_s` seconds."""
    cpus, gpus, deadline = task_cpus(context), task_gpus(context), time.monotonic() + wait_s
    while True:
        found = executors(context)
        slots = task_slots(found, cpus, gpus)
        if slots >= num_proc:
            if gpus:
                log.info("task slots: %d (%s)", slots, _slot_detail(found, cpus, gpus))
            return slots
        if time.monotonic() >= deadline:
            break
        time.sleep(1.0)
    detail = _slot_detail(found, cpus, gpus) or "no executor registered"
    if gpus:
        raise UserError(
            f"train.num_proc={num_proc} ranks need {num_proc} task slots of spark.task.cpus={cpus} cores and spark.task.resource.gpu.amount={gpus:g} GPUs "
            f"at once, but the executors give {slots} ({detail}): lower train.num_proc, or give the executors more GPUs (spark.executor.resource.gpu.amount)"
        )
    raise UserError(
        f"train.num_proc={num_proc} ranks need {num_proc} task slots of spark.task.cpus={cpus} cores at once, but the executors give {slots} "
        f"({detail}): lower train.num_proc, or give each executor a multiple of spark.task.cpus cores"
    )


def _slot_detail(found: list[Executor], cpus: int, gpus: float) -> str:
    gpu_part = (lambda e: f", {e.gpus} GPUs") if gpus else (lambda e: "")
    return ", ".join(f"executor {e.id} on {e.host}: {e.cores} cores{gpu_part(e)}, {executor_slots(e, cpus, gpus)} slots" for e in found)


def check_for_ranks(context, train) -> None:
    """Everything here, before the ranks start (and before preprocessing, in `run`):
    `train` is the config's train section."""
    local = is_local(context.master)
    # A cluster's executors may still be registering: give them Horovod's start timeout.
    slots = check_task_slots(context, train.num_proc, 0.0 if local else train.start_timeout)
    if not local:
        check_hosts(context, slots, list(train.nics))


@dataclass(frozen=True)
class HostView:
    """A host as one of its Spark tasks sees it."""

    name: str
    address: str | None  # what its own name resolves to; None: nothing
    interfaces: tuple[str, ...]

    def unreachable(self) -> str | None:
        """Why other hosts cannot reach this one at the address its name resolves to."""
        if self.address is None:
            return f"{self.name} cannot resolve its own name"
        if ipaddress.ip_address(self.address).is_loopback:
            return f"{self.name} resolves its own name to {self.address}"
        return None


def _look_around(_) -> list[HostView]:
    import psutil  # a dependency of Horovod's, which lists interfaces the same way

    name = socket.gethostname()
    try:
        address = socket.gethostbyname(name)
    except OSError:
        address = None
    return [HostView(name, address, tuple(sorted(psutil.net_if_addrs())))]


def check_hosts(context, slots: int, nics: list[str]) -> list[HostView]:
    """Refuse hosts that ranks on other hosts could not reach, and a train.nics
    interface some host lacks; return what each host reported.

    Gloo, and Spark's block managers, advertise the address a host's name resolves to.
    A Debian-style /etc/hosts maps it to 127.0.1.1, which no other host can reach (and
    horovod 0.28.1 builds its process-set Gloo context from the host name even when an
    interface is given, so train.nics cannot route around it). One short task per slot:
    the first scheduling round gives every free slot a task, so every executor answers.
    """
    views = {v.name: v for v in context.parallelize(range(slots), slots).mapPartitions(_look_around).collect()}
    hosts = sorted(views.values(), key=lambda v: v.name)
    problems = [p for p in (v.unreachable() for v in hosts) if p]
    if len(hosts) > 1 and problems:
        raise UserError(
            f"ranks would span {len(hosts)} hosts, but {'; '.join(problems)}, an address other hosts cannot reach "
            "(Gloo would time out connecting): map each host's name to its cluster address in /etc/hosts (or DNS) on every host"
        )
    for view in hosts:
        missing = [nic for nic in nics if nic not in view.interfaces]
        if missing:
            raise UserError(
                f"train.nics={nics}, but host {view.name} has no interface {', '.join(missing)} (it has {', '.join(view.interfaces)}): "
                "list interfaces every host has, or leave train.nics empty for Horovod to choose"
            )
    log.info("executor hosts: %s", ", ".join(f"{v.name} ({v.address})" for v in hosts))
    return hosts

"""Each rank on cores of its own, where a host's ranks fill its cores (train.bind_cores).

Left to the kernel, a rank's thread moves between cores: on 2 cores of an AMD EPYC VM,
one plain process of the demo model stepped with a 90th percentile of 93 ms unbound
against 86 ms bound to one core (medians 76 and 75 ms). A synchronous step waits for
the slower rank, so that tail is paid at every step by both ranks: two processes'
steps paired as a 2-rank step would pair them kept 0.94-0.95 of their summed
tokens/s bound and 0.87-0.96 unbound (3 alternated rounds; issue 28's notes).

Binding is only done where the host's ranks, times their threads, use exactly the cores
this process may run on: then the job owns the host's cores whatever it does, and a
rank's slice cannot crowd another job onto a core the kernel would have kept free.
Threads already running (Horovod's background thread, Gloo's) are bound with the main
thread; threads started later inherit its binding.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)


def topology_order(cpus: set[int], sysfs: Path = Path("/sys/devices/system/cpu")) -> list[int]:
    """`cpus` ordered so that the hardware threads of one physical core sit together
    (by package, then core, then number), so that a slice of them is whole cores; in
    number order where the kernel does not say."""

    def key(cpu: int) -> tuple[int, int, int]:
        topology = sysfs / f"cpu{cpu}" / "topology"
        try:
            return int((topology / "physical_package_id").read_text()), int((topology / "core_id").read_text()), cpu
        except (OSError, ValueError):
            return 0, cpu, cpu

    return sorted(cpus, key=key)


def cores_for_rank(local_rank: int, local_size: int, threads: int, cpus: set[int]) -> list[int] | None:
    """The cores of the `local_rank`-th of `local_size` ranks of `threads` threads on
    this host, or None where their threads do not use exactly `cpus` (fewer leave cores
    to others, more share them anyway: the kernel places them better than a fixed slice)."""
    if local_size * threads != len(cpus) or not 0 <= local_rank < local_size:
        return None
    ordered = topology_order(cpus)
    return ordered[local_rank * threads : (local_rank + 1) * threads]


def bind_process(cores: list[int]) -> None:
    """Every thread of this process onto `cores` (sched_setaffinity binds one thread:
    the ones already started would keep running anywhere)."""
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # the thread ended since the listing
            os.sched_setaffinity(int(task), cores)


def binds(setting: str, backend: str) -> bool:
    """Whether train.bind_cores=`setting` binds the ranks of `backend` ("horovod", "torch")."""
    return setting == "all" or setting == backend


def bind_rank(wanted: bool, local_rank: int, local_size: int, threads: int) -> list[int] | None:
    """Binds this rank's threads to its cores where `wanted` and the host's ranks fill
    its cores; the cores bound to, or None where nothing was bound."""
    if not wanted or not hasattr(os, "sched_setaffinity"):
        return None
    cores = cores_for_rank(local_rank, local_size, threads, os.sched_getaffinity(0))
    if cores is not None:
        bind_process(cores)
        log.debug("rank %d of %d on this host bound to cores %s", local_rank, local_size, cores)
    return cores

"""A barrier for ranks on one host, through named pipes: the shared-memory reduction's.

The gradients' average through /dev/shm (host_reduction.py) needs one meeting per step:
every rank has written its row before any rank reads the rows. A collective of the
backend costs a few milliseconds for that on a 2-core host: Gloo's barrier is a round of
messages over loopback TCP, Horovod's adds a negotiation through its background thread.
In a probe of two plain processes stepping the demo model and meeting after each backward
pass (2026-12-06, AMD EPYC, not kept), each waited 2.7-3.6 ms a step at Gloo's barrier and
0.6-1.5 ms at these pipes; `bench/paired.py --compare barrier` measures the two in the
product (bench/results.md).

Rank 0 is the hub: each other rank writes one byte up its pipe and waits for one down its
own; rank 0 waits for a byte from every rank, then answers each. The kernel's pipe hands
the byte over under a lock, so each rank's writes to the segment before its byte are
seen by every rank after the answer, on any CPU, without atomics. A rank that dies has
its pipes closed by the kernel (even under SIGKILL): the hub reads an end of file at its
next meeting and fails at once, which closes its own pipes and fails the others in turn.
A rank that hangs alive is the stall watchdog's (launchers/watchdog.py).

A wait first polls for a short while, then sleeps in the kernel. Where every rank has a
core to itself, the early rank's core would sit idle anyway, and answering within
microseconds costs nothing; a rank with fewer cores than threads never polls.
"""

from __future__ import annotations

import os
import select
import time

# How long a wait polls before it sleeps: about the usual wait in the probe above, so
# that most meetings are answered without the early rank's core going idle.
POLL_S = 0.002


LOST = "another training rank on this host exited in the middle of a step (its end of the shared-memory reduction closed): its own error comes first in the log"


class RankLost(RuntimeError):
    """Another rank on this host closed its end of the barrier: it exited or was killed."""


class PipeBarrier:
    """`barrier()` returns once every rank of the host has called it; built by `open`
    (host_reduction.py), which every rank calls at the same point."""

    def __init__(self, rank: int, reads: list[int], writes: list[int], poll_s: float):
        self.rank, self.reads, self.writes, self.poll_s = rank, reads, writes, poll_s
        self.sleepers = {}  # a poll object per read end (select's descriptors stop at 1023)
        for fd in reads:
            self.sleepers[fd] = select.poll()
            self.sleepers[fd].register(fd, select.POLLIN)

    def __call__(self) -> None:
        if not self.writes:  # a meeting after close() would let a hub with no peers left through
            raise RuntimeError("the shared-memory reduction's barrier was used after it was closed")
        if self.rank == 0:
            for fd in self.reads:
                self._receive(fd)
            for fd in self.writes:
                self._send(fd)
        else:
            self._send(self.writes[0])
            self._receive(self.reads[0])

    def _send(self, fd: int) -> None:
        try:
            os.write(fd, b"\0")
        except BrokenPipeError:  # the reader has gone: Python ignores SIGPIPE, write fails with EPIPE
            raise RankLost(LOST) from None

    def _receive(self, fd: int) -> None:
        polling_until = time.perf_counter() + self.poll_s
        while True:
            try:
                byte = os.read(fd, 1)
            except BlockingIOError:  # no byte yet: poll, then sleep until one (or the end) comes
                if time.perf_counter() >= polling_until:
                    self.sleepers[fd].poll()  # until a byte, or the end of file (POLLHUP), comes
                continue
            if not byte:
                raise RankLost(LOST)
            return

    def close(self) -> None:
        for fd in self.reads + self.writes:
            os.close(fd)
        self.reads, self.writes, self.sleepers = [], [], {}


def make_pipes(directory: str, size: int) -> None:
    """Rank 0's part of the set-up: a pipe up from and one down to every other rank."""
    for rank in range(1, size):
        os.mkfifo(pipe_path(directory, "up", rank), 0o600)
        os.mkfifo(pipe_path(directory, "down", rank), 0o600)


def pipe_path(directory: str, direction: str, rank: int) -> str:
    return os.path.join(directory, f"{direction}-{rank}")


def open_reads(directory: str, rank: int, size: int) -> list[int]:
    """A rank's read ends, opened first on every rank: opening a write end fails while no
    reader holds the pipe. Non-blocking, so that a wait can poll; an end of file then
    means every writer has gone."""
    return _open_all(_ends(directory, rank, size, hub="up", other="down"), os.O_RDONLY | os.O_NONBLOCK)


def open_writes(directory: str, rank: int, size: int) -> list[int]:
    """A rank's write ends, once every rank's read ends are open. A one-byte write to a
    pipe that every meeting drains never blocks."""
    return _open_all(_ends(directory, rank, size, hub="down", other="up"), os.O_WRONLY | os.O_NONBLOCK)


def _ends(directory: str, rank: int, size: int, hub: str, other: str) -> list[str]:
    """The hub's pipes of direction `hub`, one per other rank; another rank's own pipe of
    direction `other` (a pipe the hub reads, the other rank writes, and the reverse)."""
    return [pipe_path(directory, hub, r) for r in range(1, size)] if rank == 0 else [pipe_path(directory, other, rank)]


def _open_all(names: list[str], flags: int) -> list[int]:
    """Every name opened, or none left open."""
    opened: list[int] = []
    try:
        for name in names:
            opened.append(os.open(name, flags))
    except OSError:
        for fd in opened:
            os.close(fd)
        raise
    return opened


def poll_seconds(size: int, threads_per_rank: int, bound: bool = False) -> float:
    """POLL_S where every rank's threads have a core of their own, else 0: each rank
    `bound` to cores of its own (affinity.py; its set is then its slice alone), or
    enough cores in this process's set for all of them."""
    return POLL_S if bound or size * threads_per_rank <= len(os.sched_getaffinity(0)) else 0.0

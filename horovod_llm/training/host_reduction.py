"""The gradients' average through shared memory, where every rank runs on one host.

Gloo moves a reduction over TCP, even on loopback: 2 ranks on a 2-core host spent about
9% of their training loop waiting at the allreduce of the demo model's 2.6 MB gradient,
where two plain processes lose nothing (issue 28, bench/results.md). Ranks that share a
host can instead each write their gradient into one memory segment and read the others'
back: one copy in, one sum out, and a barrier between them, which is the only message
left on the wire. No library on this stack offers that for CPU tensors (Gloo here has
only its TCP transport, Horovod's shared-memory path needs MPI, and Intel's oneCCL
bindings are not on PyPI), so it is written here, in torch, over a file in /dev/shm.

Between the writes and the reads the ranks meet through pipes (pipe_barrier.py), not
through a collective of the backend, which took a few milliseconds a step for the same
meeting. The pipes also order each rank's writes before the others' reads on any CPU,
without atomics, and a rank that dies closes them, which fails the others' next step.

Each step writes one of two slots in turn. A rank writes slot p at step k only after
the barrier of step k-1, which every other rank reached after it had read slot p at
step k-2, so no rank overwrites what another is still reading. Every rank sums the rows
in the same order, so all of them end with the same bits, as a ring allreduce does.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid

import torch

from horovod_llm.training import pipe_barrier

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"  # tmpfs on Linux; where it is missing (macOS), Gloo reduces
MAX_SHARE_OF_MEMORY = 8  # the segment may take at most this fraction (1/8) of the host's memory


class HostReduction:
    """Averages a flat fp32 CPU tensor over `comm`'s ranks through a shared segment.
    Build it with `open`, which every rank calls at the same point."""

    def __init__(self, segment: torch.Tensor, rank: int, size: int, barrier: pipe_barrier.PipeBarrier | BackendBarrier, path: str):
        self.segment, self.rank, self.size, self.barrier = segment, rank, size, barrier
        self.path = path  # the segment's and the pipes' directory, removed once every rank opened it
        self.parity = 0
        self.mean = torch.empty(segment.shape[-1])  # kept: a step allocates nothing here

    def slot(self) -> torch.Tensor:
        """This rank's row of the slot this step writes: the caller fills it in place."""
        return self.segment[self.parity, self.rank]

    def average(self) -> torch.Tensor:
        """After this rank filled `slot()`: the rows' mean, in a buffer the next call
        overwrites."""
        rows = self.segment[self.parity]
        self.barrier()  # every rank has written its row
        # Row by row, in rank order on every rank: torch.sum over the rows' dimension took
        # 0.43 ms for 2 rows of the demo's gradient, these adds 0.18 (AMD EPYC, 1 thread).
        torch.add(rows[0], rows[1], out=self.mean)
        for row in rows[2:]:
            self.mean.add_(row)
        self.mean.div_(self.size)
        self.parity ^= 1
        return self.mean

    def close(self) -> None:
        """Closes the pipes (the segment's memory goes with the last tensor on it)."""
        self.barrier.close()

    @classmethod
    def open(cls, comm, numel: int, shm_dir: str | None = None, pipes: bool = True) -> HostReduction | None:
        """A collective: the reduction every rank shares, or None on every rank where
        they do not all share this host's memory (several hosts, no /dev/shm, too little
        room in it), and the gradients go through the backend's allreduce instead. The
        ranks meet through pipes, or through `comm`'s barrier where `pipes` is False."""
        if comm.size < 2 or comm.local_size != comm.size:
            return None
        nbytes = 2 * comm.size * numel * 4
        directory = None
        if comm.rank == 0:
            # Two slots of a row per rank: a few MB for the recipes' models, but many ranks
            # of a large model would take a real share of the host's memory for it.
            physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            if nbytes > physical // MAX_SHARE_OF_MEMORY:
                log.info("no shared-memory reduction: %d MB exceed 1/%d of this host's memory", nbytes >> 20, MAX_SHARE_OF_MEMORY)
            else:
                directory = create_meeting(shm_dir or SHM_DIR, nbytes, comm.size)
        directory = comm.broadcast_object(directory, name="host_reduction_path")
        if directory is None:
            return None
        segment, reads, writes, failed = None, [], [], 0.0
        try:
            try:
                size = 2 * comm.size * numel
                segment = torch.from_file(segment_path(directory), shared=True, size=size, dtype=torch.float32).view(2, comm.size, numel)
                # Proof that the ranks see one memory, not merely files of one name (two
                # containers that report the same hostname): each marks its own row...
                segment[0, comm.rank, 0] = comm.rank + 1
                if pipes:
                    reads = pipe_barrier.open_reads(directory, comm.rank, comm.size)
            except (OSError, RuntimeError) as exc:
                log.info("shared-memory reduction unavailable on rank %d (%s)", comm.rank, exc)
                failed = 1.0
            comm.barrier()  # every read end is open: the write ends can open
            if pipes and not failed:
                try:
                    writes = pipe_barrier.open_writes(directory, comm.rank, comm.size)
                except OSError as exc:
                    log.info("shared-memory reduction unavailable on rank %d (%s)", comm.rank, exc)
                    failed = 1.0
            comm.barrier()
        finally:
            if comm.rank == 0:
                shutil.rmtree(directory, ignore_errors=True)  # every rank has opened it (or failed to): nothing to leak at exit
        if not failed:  # ...and reads every rank's mark
            seen = segment[0, :, 0].tolist()
            failed = float(seen != [float(r + 1) for r in range(comm.size)])
        if pipes:
            barrier = pipe_barrier.PipeBarrier(
                comm.rank, reads, writes, pipe_barrier.poll_seconds(comm.size, torch.get_num_threads(), bound=comm.cores is not None)
            )
        else:
            barrier = BackendBarrier(comm)
        if comm.allreduce(torch.tensor([failed]), "max", name="host_reduction_check").item():
            barrier.close()
            if comm.rank == 0:
                log.info("the ranks share no memory segment: gradients are averaged by the backend's allreduce")
            return None
        return cls(segment, comm.rank, comm.size, barrier, directory)


class BackendBarrier:
    """The backend's barrier in PipeBarrier's place (train.shared_memory_barrier=backend):
    a message on a socket, which orders the writes before the reads as the pipes do."""

    def __init__(self, comm):
        self.comm = comm

    def __call__(self) -> None:
        self.comm.barrier()

    def close(self) -> None:
        """Nothing of its own to close."""


def segment_path(directory: str) -> str:
    return os.path.join(directory, "segment")


def create_meeting(shm_dir: str, nbytes: int, size: int) -> str | None:
    """Rank 0's part of the set-up: a private directory in `shm_dir` with the segment of
    `nbytes` and the barrier's pipes, or None where it cannot be made."""
    directory = os.path.join(shm_dir, f"horovod-llm-{uuid.uuid4().hex}")
    try:
        os.mkdir(directory, 0o700)
    except OSError as exc:
        log.info("no shared-memory reduction: %s", exc)
        return None
    try:
        if create_segment(segment_path(directory), nbytes):
            pipe_barrier.make_pipes(directory, size)
            return directory
    except OSError as exc:
        log.info("no shared-memory reduction: pipes in %s: %s", shm_dir, exc)
    shutil.rmtree(directory, ignore_errors=True)
    return None


def create_segment(path: str, nbytes: int) -> bool:
    """A new file of `nbytes` at `path`, its pages reserved, or False. Reserving up
    front matters: a write to tmpfs past its free space kills the process with SIGBUS,
    where posix_fallocate fails here with ENOSPC and training falls back to Gloo."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        log.info("no shared-memory reduction: %s", exc)
        return False
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        log.info("no shared-memory reduction: %d bytes at %s: %s", nbytes, path, exc)
        return False
    os.close(fd)
    return True

"""The gradients' average through shared memory, where every rank runs on one host.

Gloo moves a reduction over TCP, even on loopback: 2 ranks on a 2-core host spent about
9% of their training loop waiting at the allreduce of the demo model's 2.6 MB gradient,
where two plain processes lose nothing (issue 28, bench/results.md). Ranks that share a
host can instead each write their gradient into one memory segment and read the others'
back: one copy in, one sum out, and a barrier between them, which is the only message
left on the wire. No library on this stack offers that for CPU tensors (Gloo here has
only its TCP transport, Horovod's shared-memory path needs MPI, and Intel's oneCCL
bindings are not on PyPI), so it is written here, in torch, over a file in /dev/shm.

The barrier stays a collective of the backend (Gloo), so a rank that dies or a host that
vanishes fails the step as it did before; and a message on a socket orders each rank's
writes before the others' reads on any CPU, without atomics.

Each step writes one of two slots in turn. A rank writes slot p at step k only after
the barrier of step k-1, which every other rank reached after it had read slot p at
step k-2, so no rank overwrites what another is still reading. Every rank sums the rows
in the same order, so all of them end with the same bits, as a ring allreduce does.
"""

from __future__ import annotations

import logging
import os
import uuid

import torch

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"  # tmpfs on Linux; where it is missing (macOS), Gloo reduces
MAX_SHARE_OF_MEMORY = 8  # the segment may take at most this fraction (1/8) of the host's memory


class HostReduction:
    """Averages a flat fp32 CPU tensor over `comm`'s ranks through a shared segment.
    Build it with `open`, which every rank calls at the same point."""

    def __init__(self, segment: torch.Tensor, rank: int, size: int, barrier, path: str):
        self.segment, self.rank, self.size, self.barrier = segment, rank, size, barrier
        self.path = path  # unlinked once every rank mapped it
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
        torch.sum(rows, dim=0, out=self.mean)
        self.mean.div_(self.size)
        self.parity ^= 1
        return self.mean

    @classmethod
    def open(cls, comm, numel: int, shm_dir: str | None = None) -> HostReduction | None:
        """A collective: the reduction every rank shares, or None on every rank where
        they do not all share this host's memory (several hosts, no /dev/shm, too little
        room in it), and the gradients go through the backend's allreduce instead."""
        if comm.size < 2 or comm.local_size != comm.size:
            return None
        nbytes = 2 * comm.size * numel * 4
        path = None
        if comm.rank == 0:
            # Two slots of a row per rank: a few MB for the recipes' models, but many ranks
            # of a large model would take a real share of the host's memory for it.
            physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            if nbytes > physical // MAX_SHARE_OF_MEMORY:
                log.info("no shared-memory reduction: %d MB exceed 1/%d of this host's memory", nbytes >> 20, MAX_SHARE_OF_MEMORY)
            else:
                path = create_segment(shm_dir or SHM_DIR, nbytes)
        path = comm.broadcast_object(path, name="host_reduction_path")
        if path is None:
            return None
        segment, failed = None, 0.0
        try:
            segment = torch.from_file(path, shared=True, size=2 * comm.size * numel, dtype=torch.float32).view(2, comm.size, numel)
            # Proof that the ranks see one memory, not merely files of one name (two
            # containers that report the same hostname): each marks its own row...
            segment[0, comm.rank, 0] = comm.rank + 1
        except (OSError, RuntimeError) as exc:
            log.info("shared-memory reduction unavailable on rank %d (%s)", comm.rank, exc)
            failed = 1.0
        try:
            comm.barrier()
        finally:
            if comm.rank == 0:
                os.unlink(path)  # every rank has mapped it (or failed to): nothing to leak at exit
        if not failed:  # ...and reads every rank's mark
            seen = segment[0, :, 0].tolist()
            failed = float(seen != [float(r + 1) for r in range(comm.size)])
        if comm.allreduce(torch.tensor([failed]), "max", name="host_reduction_check").item():
            if comm.rank == 0:
                log.info("the ranks share no memory segment: gradients are averaged by the backend's allreduce")
            return None
        return cls(segment, comm.rank, comm.size, comm.barrier, path)


def create_segment(shm_dir: str, nbytes: int) -> str | None:
    """A new file of `nbytes` in `shm_dir`, its pages reserved, or None. Reserving up
    front matters: a write to tmpfs past its free space kills the process with SIGBUS,
    where posix_fallocate fails here with ENOSPC and training falls back to Gloo."""
    path = os.path.join(shm_dir, f"horovod-llm-{uuid.uuid4().hex}")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:
        log.info("no shared-memory reduction: %s", exc)
        return None
    try:
        os.posix_fallocate(fd, 0, nbytes)
    except OSError as exc:
        os.close(fd)
        os.unlink(path)
        log.info("no shared-memory reduction: %d bytes in %s: %s", nbytes, shm_dir, exc)
        return None
    os.close(fd)
    return path

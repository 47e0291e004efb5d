"""A rank of tests/integration/test_host_reduction.py: three optimizer steps, each rank's
gradient a known vector times the step; the rank returns how its gradients were averaged
and what its optimizer held after each step."""

from __future__ import annotations

import os
import time

import torch

from horovod_llm.config import TrainConfig
from horovod_llm.training import host_reduction
from horovod_llm.training.comm import init_collectives
from tests.integration.fp16_ranks import SIZE, rank_gradient

STEPS = 3


def averaged_gradients(backend: str, shared_memory: bool, shm_dir: str | None, barrier: str = "pipes") -> dict:
    if shm_dir is not None:
        host_reduction.SHM_DIR = shm_dir
    train = TrainConfig(shared_memory_allreduce=shared_memory, shared_memory_barrier=barrier)
    comm = init_collectives(backend, train)
    try:
        model = torch.nn.Module()
        model.weight = torch.nn.Parameter(torch.zeros(SIZE))
        model.bias = torch.nn.Parameter(torch.zeros(3))  # a second tensor: the flattening's offsets
        optimizer = comm.distributed_optimizer(torch.optim.SGD(model.parameters(), lr=0.0), model, train)
        host = getattr(optimizer, "host", None)
        received = []
        for step in range(1, STEPS + 1):
            optimizer.zero_grad()
            ((model.weight * rank_gradient(comm.rank)).sum() * step + model.bias.sum() * (comm.rank + step)).backward()
            optimizer.synchronize()
            received.append(model.weight.grad.tolist() + model.bias.grad.tolist())
        return {
            "reduction": comm.gradient_reduction,
            "barrier": type(host.barrier).__name__ if host is not None else None,
            "segment_left": host is not None and os.path.exists(host.path),
            "received": received,
        }
    finally:
        comm.close()


def horovod_rank(shared_memory: bool, shm_dir: str | None, barrier: str) -> dict:
    return averaged_gradients("horovod", shared_memory, shm_dir, barrier)


def torch_rank(rank: int, port: int, shared_memory: bool, shm_dir: str | None, barrier: str, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    results[rank] = averaged_gradients("torch", shared_memory, shm_dir, barrier)


def torch_rank_that_loses_a_peer(rank: int, port: int, dying: int, results) -> None:
    """Both ranks take a step through shared memory; then `dying` exits as a killed rank
    would, and the other records what its next step raised, and how soon."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    train = TrainConfig(shared_memory_allreduce=True)
    comm = init_collectives("torch", train)
    model = torch.nn.Linear(4, 1)
    optimizer = comm.distributed_optimizer(torch.optim.SGD(model.parameters(), lr=0.0), model, train)
    model(torch.ones(4)).sum().backward()
    optimizer.synchronize()
    if rank == dying:
        os._exit(9)  # no clean-up, no exception handler: the kernel closes its pipes
    started = time.monotonic()
    try:
        optimizer.synchronize()
        results[rank] = {"error": None}
    except Exception as exc:  # noqa: BLE001 (the test reads what was raised)
        results[rank] = {"error": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - started, "reduction": comm.gradient_reduction}

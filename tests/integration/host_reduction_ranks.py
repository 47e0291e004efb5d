"""A rank of tests/integration/test_host_reduction.py: three optimizer steps, each rank's
gradient a known vector times the step; the rank returns how its gradients were averaged
and what its optimizer held after each step."""

from __future__ import annotations

import os

import torch

from horovod_llm.config import TrainConfig
from horovod_llm.training import host_reduction
from horovod_llm.training.comm import init_collectives
from tests.integration.fp16_ranks import SIZE, rank_gradient

STEPS = 3


def averaged_gradients(backend: str, shared_memory: bool, shm_dir: str | None) -> dict:
    if shm_dir is not None:
        host_reduction.SHM_DIR = shm_dir
    train = TrainConfig(shared_memory_allreduce=shared_memory)
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
            "segment_left": host is not None and os.path.exists(host.path),
            "received": received,
        }
    finally:
        comm.close()


def horovod_rank(shared_memory: bool, shm_dir: str | None) -> dict:
    return averaged_gradients("horovod", shared_memory, shm_dir)


def torch_rank(rank: int, port: int, shared_memory: bool, shm_dir: str | None, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    results[rank] = averaged_gradients("torch", shared_memory, shm_dir)

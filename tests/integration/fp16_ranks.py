"""A rank of tests/integration/test_fp16_allreduce.py: each rank's gradient is a known
vector; the rank returns the gradient its optimizer holds after the allreduce."""

from __future__ import annotations

import os

import torch

from horovod_llm.config import TrainConfig
from horovod_llm.training.comm import init_collectives

SIZE = 4096


def rank_gradient(rank: int) -> torch.Tensor:
    """Values in [0.5, 2): most need more bits than fp16's 11, so compression shows."""
    return 0.5 + 1.5 * torch.rand(SIZE, generator=torch.Generator().manual_seed(1000 + rank))


def averaged_gradient(backend: str, fp16: bool) -> list[float]:
    comm = init_collectives(backend, TrainConfig(fp16_allreduce=fp16))
    try:
        parameter = torch.nn.Parameter(torch.zeros(SIZE))
        model = torch.nn.Module()
        model.weight = parameter
        optimizer = comm.distributed_optimizer(torch.optim.SGD(model.parameters(), lr=0.0), model, TrainConfig(fp16_allreduce=fp16))
        (parameter * rank_gradient(comm.rank)).sum().backward()  # the gradient is the rank's vector
        optimizer.synchronize()  # Horovod: wait for the reduction the backward pass started
        return parameter.grad.tolist()
    finally:
        comm.close()


def horovod_rank(fp16: bool) -> list[float]:
    return averaged_gradient("horovod", fp16)


def torch_rank(rank: int, port: int, fp16: bool, results) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    results[rank] = averaged_gradient("torch", fp16)

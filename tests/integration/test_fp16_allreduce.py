"""train.fp16_allreduce under both backends: what each rank receives is the average of
the ranks' gradients rounded to fp16 (each rank's, then their sum), not the fp32 one.
Two real ranks each: Horovod's through its own launcher (Gloo on loopback), torch's as
two processes of torch.distributed with Gloo."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from tests.integration import fp16_ranks


def expected(fp16: bool) -> torch.Tensor:
    first, second = fp16_ranks.rank_gradient(0), fp16_ranks.rank_gradient(1)
    if not fp16:
        return (first + second) / 2
    # each rank's gradient to fp16, summed in fp16 (one rounding of the exact sum), then
    # halved (exact) and back to fp32
    return (first.half() + second.half()).float() / 2


def run_torch_ranks(fp16: bool) -> list[list[float]]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(fp16_ranks.torch_rank, args=(port, fp16, results), nprocs=2, join=True)
        return [results[0], results[1]]


def run_horovod_ranks(fp16: bool) -> list[list[float]]:
    from horovod.runner import run

    return run(fp16_ranks.horovod_rank, args=(fp16,), np=2, use_gloo=True, network_interface="lo", start_timeout=60)


@pytest.mark.parametrize("backend", ["horovod", "torch"])
def test_ranks_receive_the_fp16_rounded_average(backend):
    ranks = run_horovod_ranks if backend == "horovod" else run_torch_ranks
    received = {fp16: [torch.tensor(r) for r in ranks(fp16)] for fp16 in (True, False)}
    for fp16 in (True, False):
        for gradient in received[fp16]:
            assert torch.equal(gradient, expected(fp16)), (backend, fp16, (gradient - expected(fp16)).abs().max().item())
    # the two differ, so neither check could pass with the other setting
    assert not torch.equal(expected(True), expected(False))

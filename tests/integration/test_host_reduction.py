"""train.shared_memory_allreduce: two real ranks on this host (Horovod's through its own
launcher, torch's as two torch.distributed processes, both with Gloo on loopback) average
their gradients through /dev/shm, step after step, to the exact mean and the same bits on
both; where the segment cannot be made they fall back to the backend's allreduce."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

from horovod_llm.training.host_reduction import create_meeting
from tests.integration import host_reduction_ranks
from tests.integration.fp16_ranks import rank_gradient


def expected(step: int) -> list[float]:
    weight = (rank_gradient(0) * step + rank_gradient(1) * step) / 2  # each rank's gradient, then their mean
    bias = torch.full((3,), float((0 + step) + (1 + step))) / 2
    return torch.cat([weight, bias]).tolist()


def run_ranks(backend: str, shared_memory: bool, shm_dir: str | None = None, barrier: str = "pipes") -> list[dict]:
    if backend == "horovod":
        from horovod.runner import run

        return run(host_reduction_ranks.horovod_rank, args=(shared_memory, shm_dir, barrier), np=2, use_gloo=True, network_interface="lo", start_timeout=60)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(host_reduction_ranks.torch_rank, args=(port, shared_memory, shm_dir, barrier, results), nprocs=2, join=True)
        return [results[0], results[1]]


@pytest.mark.parametrize("barrier", ["pipes", "backend"])
@pytest.mark.parametrize("backend", ["horovod", "torch"])
def test_ranks_on_one_host_average_through_shared_memory(backend, barrier):
    ranks = run_ranks(backend, shared_memory=True, barrier=barrier)
    for rank in ranks:
        assert rank["reduction"] == "shared_memory"
        assert rank["barrier"] == {"pipes": "PipeBarrier", "backend": "BackendBarrier"}[barrier]
        assert rank["segment_left"] is False  # removed once both ranks had opened it
        for step, received in enumerate(rank["received"], start=1):
            assert received == expected(step), (backend, step)


@pytest.mark.parametrize("backend", ["horovod", "torch"])
def test_without_a_shared_memory_directory_the_backend_averages(backend, tmp_path):
    off = run_ranks(backend, shared_memory=False)
    missing = run_ranks(backend, shared_memory=True, shm_dir=str(tmp_path / "no-such-dir"))
    for rank in off + missing:
        assert rank["reduction"] == backend
        assert rank["received"] == [expected(step) for step in (1, 2, 3)]


@pytest.mark.parametrize("dying", [0, 1])
def test_a_rank_that_dies_fails_the_other_at_its_next_step(dying):
    # The meeting is through pipes, not the backend: the kernel closes a dead rank's
    # ends, and its peer must fail at once rather than wait for a timeout.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with mp.Manager() as manager:
        results = manager.dict()
        context = mp.start_processes(host_reduction_ranks.torch_rank_that_loses_a_peer, args=(port, dying, results), nprocs=2, join=False)
        for process in context.processes:
            process.join(timeout=60)
        assert [p.exitcode for p in context.processes][dying] == 9
        survivor = results[1 - dying]
    assert survivor["reduction"] == "shared_memory"
    assert survivor["error"] == "RankLost", survivor
    assert "exited in the middle of a step" in survivor["message"]
    assert survivor["seconds"] < 5


def test_a_segment_larger_than_the_room_left_is_refused_and_removed(tmp_path):
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    assert create_meeting(str(tmp_path), 4 * free + (1 << 30), 2) is None
    assert list(tmp_path.iterdir()) == []
    directory = create_meeting(str(tmp_path), 4096, 3)
    assert directory is not None and os.path.getsize(os.path.join(directory, "segment")) == 4096
    assert sorted(os.listdir(directory)) == ["down-1", "down-2", "segment", "up-1", "up-2"]

"""The shared-memory reduction's pipe barrier, between two threads of this process: the
ranks' integration tests (tests/integration/test_host_reduction.py) use real processes."""

from __future__ import annotations

import os
import threading

import pytest

from horovod_llm.training import pipe_barrier
from horovod_llm.training.pipe_barrier import PipeBarrier, RankLost


def two_barriers(directory: str) -> tuple[PipeBarrier, PipeBarrier]:
    pipe_barrier.make_pipes(directory, 2)
    reads = [pipe_barrier.open_reads(directory, rank, 2) for rank in (0, 1)]
    writes = [pipe_barrier.open_writes(directory, rank, 2) for rank in (0, 1)]
    return PipeBarrier(0, reads[0], writes[0], 0.0), PipeBarrier(1, reads[1], writes[1], pipe_barrier.POLL_S)


def test_no_rank_leaves_a_meeting_before_every_rank_came(tmp_path):
    hub, other = two_barriers(str(tmp_path))
    arrived, left = threading.Event(), []
    waiting = threading.Thread(target=lambda: (hub(), left.append(arrived.is_set())))
    waiting.start()
    waiting.join(timeout=0.2)
    assert waiting.is_alive()  # the hub waits for rank 1
    arrived.set()
    other()
    waiting.join(timeout=5)
    assert left == [True]
    for _ in range(3):  # and again, step after step
        meeting = threading.Thread(target=hub)
        meeting.start()
        other()
        meeting.join(timeout=5)
        assert not meeting.is_alive()


def test_a_closed_peer_fails_the_meeting_and_a_closed_barrier_refuses_one(tmp_path):
    hub, other = two_barriers(str(tmp_path))
    other.close()  # as the kernel does for a rank that dies
    with pytest.raises(RankLost, match="exited in the middle of a step"):
        hub()
    with pytest.raises(RuntimeError, match="after it was closed"):
        other()
    hub.close()


def test_ranks_without_a_core_each_never_poll(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert pipe_barrier.poll_seconds(2, 1) == pipe_barrier.POLL_S
    assert pipe_barrier.poll_seconds(2, 2) == 0.0
    assert pipe_barrier.poll_seconds(3, 1) == 0.0


def test_ranks_bound_to_cores_of_their_own_poll(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})  # a bound rank's set: its slice
    assert pipe_barrier.poll_seconds(2, 1, bound=True) == pipe_barrier.POLL_S
    assert pipe_barrier.poll_seconds(2, 1) == 0.0

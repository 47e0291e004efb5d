"""The driver's watchdog (watchdog.py): a job without progress fails in one line, from
wherever the driver's main thread waits; heartbeats keep a job alive; datagrams without
the job's token are ignored."""

import socket
import threading
import time

import pytest

from horovod_llm.errors import JobFailed
from horovod_llm.launchers import watchdog as watchdog_module
from horovod_llm.launchers.watchdog import Heartbeat, stall_guard


def test_a_job_without_progress_fails_in_one_line_and_is_stopped():
    stopped = threading.Event()
    started = time.monotonic()
    with pytest.raises(JobFailed) as failure, stall_guard(2, "127.0.0.1", abort=stopped.set) as watchdog:
        Heartbeat(watchdog.address, 1)("step", 41)
        # The launcher's wait, which stopping the job ends as if all were well (no
        # interrupt: inside a py4j call one would break the SparkSession).
        stopped.wait(60)
    elapsed = time.monotonic() - started
    assert 2 <= elapsed < 6 and stopped.is_set()
    message = str(failure.value)
    assert message.startswith("training stalled: no rank made progress for ")
    assert "(train.stall_timeout=2)" in message and f"rank 1 on {socket.gethostname()} at step 41 (step)" in message
    assert "\n" not in message and failure.value.retryable


def test_a_wait_that_stopping_does_not_end_is_interrupted_after_the_grace(monkeypatch):
    monkeypatch.setattr(watchdog_module, "ABORT_GRACE_S", 1.0)
    stopped = []
    started = time.monotonic()
    with pytest.raises(JobFailed, match="training stalled"), stall_guard(2, "127.0.0.1", abort=lambda: stopped.append(True)):
        threading.Event().wait(60)  # a wait that nothing but the interrupt ends
    assert 3 <= time.monotonic() - started < 8 and stopped == [True]


def test_heartbeats_keep_a_job_alive():
    with stall_guard(2, "127.0.0.1") as watchdog:
        beat = Heartbeat(watchdog.address, 0)
        for step in range(10):  # 5 s of steps, more than the timeout
            beat("step", step)
            time.sleep(0.5)
        time.sleep(0.2)
        assert watchdog.heard[0].step == 9


def test_datagrams_without_the_jobs_token_are_ignored():
    with pytest.raises(JobFailed, match="no rank was heard from at all"), stall_guard(2, "127.0.0.1") as watchdog:
        host, port, _ = watchdog.address.rsplit(":", 2)
        stranger = Heartbeat(f"{host}:{port}:not-the-token", 0)
        for _ in range(8):
            stranger("step", 1)
            time.sleep(0.5)


def test_zero_means_no_watchdog_and_a_rank_without_one_sends_nothing():
    with stall_guard(0, "127.0.0.1") as watchdog:
        assert watchdog is None
    Heartbeat(None, 0)("step", 1)  # no address: nothing to do, no error

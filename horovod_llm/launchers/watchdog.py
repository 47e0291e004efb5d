"""No hang, ever: the driver fails a job whose ranks stopped making progress.

Every rank sends a heartbeat datagram (UDP) to the driver when it starts, when it
enters the training loop (again after an elastic reset, at the new size), after each
step, evaluation and checkpoint, and when it ends. The driver's `Watchdog` counts a
heartbeat that says something new (a rank's first, a later step, a loop entered again)
as progress. When none came for `train.stall_timeout` seconds, the job fails in one
line naming every rank last heard from, with its host, step and how long ago: a rank
frozen, a collective waiting on a peer that will never answer, storage that hangs
without an error, a launcher waiting for a host that is gone. Whatever the cause, the
job ends, and `train.max_restarts` can bring it back from the latest checkpoint.

UDP because a rank must never wait for the driver: a datagram is sent or dropped at
once, at a few microseconds per step. Each job has a random token, and datagrams
without it are ignored. The driver's socket binds the address its ranks reach it at
(loopback in local mode).

On a stall, the driver stops what it launched (`abort`: cancels the Spark jobs, ends
horovodrun) and raises `Stalled` in its main thread, which waits inside the launcher
(Horovod's, Spark's) and has no other way out of a wait that never ends.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from horovod_llm.errors import JobFailed

log = logging.getLogger(__name__)

# How the ranks find the driver's watchdog: in launch_info, or (horovodrun) this variable.
WATCHDOG_ENV = "HOROVOD_LLM_WATCHDOG"
# The signal the watchdog interrupts the driver's main thread with.
_INTERRUPT = signal.SIGUSR2


class Stalled(BaseException):
    """Raised in the driver's main thread by the watchdog. A BaseException, so that no
    launcher's `except Exception` takes it for an error to retry."""


@dataclass
class Heard:
    host: str
    event: str
    step: int
    at: float  # monotonic, on the driver


class Watchdog:
    """The driver's side: receives heartbeats, calls `on_stall(message)` once."""

    def __init__(self, stall_timeout_s: float, bind_host: str, on_stall: Callable[[str], None], start_allowance_s: float = 0.0):
        self.stall_timeout_s = stall_timeout_s
        # Until the first heartbeat the ranks are still starting, which the launcher's own
        # start timeout bounds: that much longer.
        self.start_allowance_s = start_allowance_s
        self.token = secrets.token_hex(8)
        self.heard: dict[int, Heard] = {}
        self.progress_at = time.monotonic()
        self.on_stall = on_stall
        self.stopped = threading.Event()
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.socket.bind((bind_host, 0))
        self.socket.settimeout(0.5)
        self.address = f"{bind_host}:{self.socket.getsockname()[1]}:{self.token}"
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._receive, name="watchdog-receive", daemon=True),
            threading.Thread(target=self._watch, name="watchdog", daemon=True),
        ]
        for thread in self.threads:
            thread.start()

    def stop(self) -> None:
        """Stop watching; once this returns, `on_stall` is never called (again)."""
        self.stopped.set()
        for thread in self.threads:
            thread.join()
        self.socket.close()

    def record(self, rank: int, host: str, event: str, step: int) -> None:
        """A heartbeat: each says a rank finished something (started, entered the loop,
        a step, an evaluation, a checkpoint), so each is progress."""
        with self.lock:
            self.progress_at = time.monotonic()
            self.heard[rank] = Heard(host, event, step, self.progress_at)

    def hosts(self) -> dict[int, str]:
        """The host each rank was last heard from."""
        with self.lock:
            return {rank: heard.host for rank, heard in self.heard.items()}

    def _receive(self) -> None:
        while not self.stopped.is_set():
            try:
                data = self.socket.recv(512)
            except (TimeoutError, OSError):
                continue
            try:
                beat = json.loads(data)
                if beat.get("token") == self.token:
                    self.record(int(beat["rank"]), str(beat["host"]), str(beat["event"]), int(beat["step"]))
            except (ValueError, KeyError, TypeError):
                continue  # not one of ours

    def _watch(self) -> None:
        while not self.stopped.wait(1.0):
            with self.lock:
                silent = time.monotonic() - self.progress_at
                limit = self.stall_timeout_s + (0.0 if self.heard else self.start_allowance_s)
                message = self.stall_message(silent) if silent > limit else None
            if message:
                self.stopped.set()
                self.on_stall(message)
                return

    def stall_message(self, silent: float) -> str:
        now = time.monotonic()
        if self.heard:
            last = "; ".join(f"rank {rank} on {h.host} at step {h.step} ({h.event}), {now - h.at:.0f} s ago" for rank, h in sorted(self.heard.items()))
        else:
            last = "no rank was heard from at all"
        return (
            f"training stalled: no rank made progress for {silent:.0f} s (train.stall_timeout={self.stall_timeout_s:g}); last heard: {last}. "
            "The ranks' logs above may say why; raise train.stall_timeout if a step, evaluation or checkpoint legitimately takes longer"
        )


# After a stall, how long abort() gets to end the launcher's wait before the main thread
# is interrupted wherever it is.
ABORT_GRACE_S = 10.0


@contextlib.contextmanager
def stall_guard(stall_timeout_s: float, bind_host: str, abort: Callable[[], None] | None = None, start_allowance_s: float = 0.0) -> Iterator[Watchdog | None]:
    """Watch the job launched inside; yield the watchdog, whose `address` the ranks send
    heartbeats to (None when train.stall_timeout is 0: no watchdog). On a stall: `abort()`
    stops what was launched, which ends the launcher's wait; should it not within
    ABORT_GRACE_S (or with no `abort`, at once), Stalled is raised in this (the main)
    thread from wherever it waits. Either way the block is left with JobFailed(the
    stall's one line). Before the first heartbeat, the ranks may take `start_allowance_s`
    more (the launcher's start timeout)."""
    if not stall_timeout_s:
        yield None
        return
    main = threading.main_thread()
    in_main = threading.current_thread() is main  # signals reach the main thread alone
    stalled: list[str] = []
    left = threading.Event()  # the main thread has left the block

    def interrupt(signum, frame):
        if stalled and not left.is_set():
            raise Stalled(stalled[0])

    def on_stall(message: str) -> None:
        stalled.append(message)
        log.error("%s", message)
        if abort is not None:
            try:
                abort()
            except Exception:  # stopping what was launched is best effort
                log.exception("stopping the stalled job failed")
        # The interrupt is the last resort: raised inside a py4j call it would leave the
        # connection to the JVM half-read, and the user's SparkSession broken with it.
        if in_main and not left.wait(0.0 if abort is None else ABORT_GRACE_S):
            signal.pthread_kill(main.ident, _INTERRUPT)

    previous = signal.signal(_INTERRUPT, interrupt) if in_main else None
    watchdog = Watchdog(stall_timeout_s, bind_host, on_stall, start_allowance_s)
    try:
        yield watchdog
        if stalled:  # abort() ended the launcher's wait as if all were well
            raise JobFailed(stalled[0])
    except BaseException:
        if stalled:  # Stalled, or what the launcher raised once abort() stopped it
            raise JobFailed(stalled[0]) from None
        raise
    finally:
        left.set()  # a late interrupt finds nothing left to stop
        watchdog.stop()  # no interrupt is sent after this
        if in_main:
            signal.signal(_INTERRUPT, previous)


class Heartbeat:
    """A rank's side: one datagram per call, never waiting, never failing."""

    def __init__(self, address: str | None, rank: int):
        self.rank = rank
        self.host = socket.gethostname()
        self.target = None
        if address:
            host, port, self.token = address.rsplit(":", 2)
            self.target = (host, int(port))
            self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.socket.setblocking(False)

    @classmethod
    def from_launch(cls, launch_info: dict | None, rank: int) -> Heartbeat:
        return cls((launch_info or {}).get("watchdog") or os.environ.get(WATCHDOG_ENV), rank)

    def __call__(self, event: str, step: int = 0) -> None:
        if self.target is None:
            return
        beat = json.dumps({"token": self.token, "rank": self.rank, "host": self.host, "event": event, "step": step}).encode()
        with contextlib.suppress(OSError):  # a full buffer or an unreachable driver: the next beat may pass
            self.socket.sendto(beat, self.target)

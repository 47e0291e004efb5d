"""Logging set-up for the CLI and for every rank (ranks are separate processes)."""

from __future__ import annotations

import logging
import sys


class CurrentStderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record is emitted, not to the stream it
    was when logging was set up: a rank swaps its streams, and a test harness replaces
    (and closes) them between tests."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass  # always the current sys.stderr


# Carriage return, then erase to the end of the line (ANSI): on a terminal, the line a
# record lands on may hold another process's progress bar.
CLEAR_LINE = "\r\x1b[K"


class TerminalHandler(CurrentStderrHandler):
    """For a terminal with progress bars (progress.py): a record erases the line it lands
    on and is written with tqdm.write, which takes this process's bars off the screen and
    draws them again below it, so that bars and records never share a line."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(CLEAR_LINE + self.format(record), file=self.stream)
            self.flush()
        except Exception:
            self.handleError(record)


def setup_logging(level: str = "INFO", rank: int | None = None, progress: bool = False) -> None:
    """Records to stderr, this package's at `level`; `progress`: stderr shows bars
    (progress.py), which the records must not break. Without bars, plain lines: no
    carriage return or escape ever reaches a log file."""
    prefix = f"[rank {rank}] " if rank is not None else ""
    # The root logger stays at WARNING: Horovod's launcher and py4j log chatty INFO
    # records through it. Only this package logs at the configured level.
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
        datefmt="%H:%M:%S",
        handlers=[TerminalHandler() if progress else CurrentStderrHandler()],
        force=True,
    )
    quiet_library_warnings()
    logging.getLogger("horovod_llm").setLevel(getattr(logging, level.upper(), logging.INFO))


def quiet_library_warnings() -> None:
    """petastorm 0.13 calls pyarrow APIs deprecated since pyarrow 5; the pins are deliberate
    (STACK.md), so their FutureWarnings only bury useful output."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm(\..*)?")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyarrow(\..*)?")


def rank_logger(name: str, is_main: bool) -> logging.Logger:
    """The logger for progress that one rank reports for all (steps, evaluations,
    checkpoints): `name`'s on the main rank, one that drops everything on the others, as
    torchtitan's non-logging ranks do. Warnings and errors of a rank's own go through the
    module's logger, on every rank."""
    if is_main:
        return logging.getLogger(name)
    silent = logging.getLogger(f"{name}.other_ranks")
    silent.disabled = True
    return silent

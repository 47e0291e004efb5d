"""Logging set-up for the CLI and for every rank (ranks are separate processes)."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", rank: int | None = None) -> None:
    prefix = f"[rank {rank}] " if rank is not None else ""
    # The root logger stays at WARNING: Horovod's launcher and py4j log chatty INFO
    # records through it. Only this package logs at the configured level.
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
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

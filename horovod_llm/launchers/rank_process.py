"""How a rank process ends, for every launcher that starts ranks as processes (Horovod
on Spark, horovodrun, TorchDistributor): with the exit status that tells the launcher
why (exits.py), so that it names the rank that failed first."""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from horovod_llm.errors import UserError
from horovod_llm.launchers.exits import PEER_LOST_STATUS, USER_ERROR_STATUS

log = logging.getLogger(__name__)


def rank_process(worker: Callable[[dict, dict | None], dict], config_values: dict, launch_info: dict | None = None, *, peer_lost_grace_s: float = 0.0) -> dict:
    """`worker(config_values, launch_info)` as a rank process: a user error ends it with
    its message on one line and exit status 2 (the launcher then stops the other ranks),
    not a traceback; a rank that only lost a peer exits with PEER_LOST_STATUS, after
    its launcher's `peer_lost_grace_s` (base.Launcher)."""
    try:
        return worker(config_values, launch_info)
    except UserError as exc:
        log.error("error: %s", exc)
        _exit_now(USER_ERROR_STATUS)
    except Exception as exc:
        from horovod_llm.training.comm import lost_peer

        if not lost_peer(exc):
            raise
        log.error("stopping: a collective failed because another rank was lost (%s)", str(exc).strip().splitlines()[0][:200])
        # Where the launcher reports only the first rank to fail, waiting lets the rank
        # that failed on its own be that one.
        time.sleep(peer_lost_grace_s)
        _exit_now(PEER_LOST_STATUS)


def _exit_now(status: int) -> NoReturn:
    """End this rank process at once, its output flushed. An orderly interpreter exit
    would first run Horovod's exit handler, whose shutdown tells the other ranks: they
    then exited (as having lost a peer) before this one, and the launcher, seeing them
    first, stopped this rank with SIGTERM and named the wrong one. Everything this rank
    wrote is already whole (storage writes are atomic)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)

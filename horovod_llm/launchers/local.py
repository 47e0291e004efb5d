"""train.launcher=local: one rank, in this process (a notebook, a smoke run, the bench)."""

from __future__ import annotations

import dataclasses
import sys

from horovod_llm.errors import UserError
from horovod_llm.launchers.base import LOOPBACK, Launcher


class InProcess(Launcher):
    name = "local"
    backend = None  # Horovod where installed, else torch.distributed with one rank
    on_spark_tasks = False
    elastic = False
    needs_horovod = False

    def run(self, worker, config, spark=None) -> dict:
        from horovod_llm import progress
        from horovod_llm.launchers.watchdog import stall_guard

        if config.train.num_proc != 1:
            raise UserError(f"train.launcher=local runs one rank, but train.num_proc={config.train.num_proc}: set train.num_proc=1")
        # The rank is this process: its bar is drawn where the driver's would be. A rank
        # points stdout at stderr (stdout carries generated text only); here that process is
        # the driver, whose stdout must come back for `run` to print its sample there.
        stdout = sys.stdout
        try:
            with stall_guard(config.train.stall_timeout, LOOPBACK) as watchdog:
                launch_info = self.launch_info(watchdog=watchdog and watchdog.address)
                return worker(dataclasses.asdict(dataclasses.replace(config, progress=progress.rank_setting(output_is_live=True))), launch_info)
        finally:
            sys.stdout = stdout

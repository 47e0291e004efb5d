"""What every launcher is (one registry entry per `train.launcher`, launchers/__init__.py).

An entry says what the rest of the package asks of a launcher: the ranks' backend,
whether its ranks are Spark tasks (so task slots bound `train.num_proc`, and the
pipeline checks the cluster before preprocessing), whether it has an elastic mode and
whether the nodes need Horovod built; and it starts the ranks (`run`). How it learns
each rank's exit is its own (Horovod on Spark's launcher, horovodrun's output,
torchrun's reports); what a set of exits means is exits.py's, for all of them.

Modelled on Horovod's own spark/common/backend.py: a small object per way of running
ranks, chosen once by name. Subclasses import Spark, Horovod and torch inside `run`,
so that reading the registry (config validation does) stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

# Locally, every server the ranks or the driver open listens here, and Gloo talks over it.
LOOPBACK = "127.0.0.1"


def horovod_installed() -> bool:
    try:
        import horovod.torch  # noqa: F401
    except ImportError:
        return False
    return True


class Launcher(ABC):
    name: str
    backend: str | None  # the ranks' collectives: "horovod", "torch"; None: Horovod where installed
    on_spark_tasks: bool  # one rank per Spark task, so task slots bound train.num_proc
    elastic: bool  # train.elastic=true is possible (Horovod elastic)
    needs_horovod: bool  # the nodes need Horovod built (EMR bootstrap, set-up)
    # A rank that only lost a peer waits this long before it exits (exits.py's
    # PEER_LOST_GRACE_S where the launcher reports only the first rank to fail).
    peer_lost_grace_s: float = 0.0

    def backend_name(self) -> str:
        """The backend its ranks use here: `local` takes Horovod when it is installed."""
        return self.backend or ("horovod" if horovod_installed() else "torch")

    def task_gpus(self) -> list[str]:
        """In a rank: the GPU addresses Spark scheduled for its task (none unless the
        ranks are Spark tasks and spark.task.resource.gpu.amount is set)."""
        return []

    def launch_info(self, **details) -> dict:
        """What a rank and the run summary's `launch` block learn of the launch."""
        return {"launcher": self.name, **details}

    @abstractmethod
    def run(self, worker: Callable[[dict, dict | None], dict], config, spark=None) -> dict:
        """Start the ranks once, each calling `worker(config_values, launch_info)`
        (training.train.train_worker; in its own process through rank_process.py); rank
        0's result (with its summary). A failed rank raises `JobFailed` naming the rank
        that failed first (exits.job_failed), which `launch_training` may restart."""

    def before_restart(self, config, spark, lost_host: str | None) -> None:
        """Called before `launch_training` starts the ranks again after a failure:
        nothing to wait for unless the ranks are Spark tasks (spark_tasks.py)."""
        return None

    def __repr__(self) -> str:
        return f"<launcher {self.name}>"

"""What each `train.launcher` is: one entry per launcher, read by validation, the
ranks' backend choice, the pipeline's cluster check and the EMR requests, so that those
rules name no launcher themselves. Starting the ranks stays with launch.py and
launch_torch.py, which import the heavy parts (Spark, Horovod) only when used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Launcher:
    name: str
    backend: str | None  # the ranks' collectives: "horovod", "torch"; None: Horovod where installed
    on_spark_tasks: bool  # one rank per Spark task, so task slots bound train.num_proc
    elastic: bool  # train.elastic=true is possible (Horovod elastic)
    needs_horovod: bool  # the nodes need Horovod built (EMR bootstrap, set-up)


LAUNCHERS = {
    launcher.name: launcher
    for launcher in (
        Launcher("spark", backend="horovod", on_spark_tasks=True, elastic=True, needs_horovod=True),
        Launcher("torch_distributor", backend="torch", on_spark_tasks=True, elastic=False, needs_horovod=False),
        Launcher("horovodrun", backend="horovod", on_spark_tasks=False, elastic=False, needs_horovod=True),
        Launcher("local", backend=None, on_spark_tasks=False, elastic=False, needs_horovod=False),
    )
}


def launcher(name: str) -> Launcher:
    try:
        return LAUNCHERS[name]
    except KeyError:
        raise ValueError(f"train.launcher ('{name}') must be one of {names()}") from None


def names() -> str:
    """'spark', 'torch_distributor', 'horovodrun' or 'local'."""
    quoted = [f"'{name}'" for name in LAUNCHERS]
    return ", ".join(quoted[:-1]) + " or " + quoted[-1]


def on_spark_tasks() -> list[str]:
    return [name for name, entry in LAUNCHERS.items() if entry.on_spark_tasks]

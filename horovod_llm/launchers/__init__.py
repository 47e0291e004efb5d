"""What starts the ranks: one registry entry per `train.launcher`.

Validation, the ranks' backend, the pipeline's cluster check, the EMR requests and
`launch_training` read this registry, so that no other rule names a launcher; adding a
launcher is one class (base.Launcher) and one line here. The classes import Spark,
Horovod and torch only when they start ranks.
"""

from __future__ import annotations

from horovod_llm.launchers.base import Launcher
from horovod_llm.launchers.horovod_spark import HorovodOnSpark
from horovod_llm.launchers.horovodrun import Horovodrun
from horovod_llm.launchers.local import InProcess
from horovod_llm.launchers.torch_distributor import TorchDistributor

LAUNCHERS: dict[str, Launcher] = {entry.name: entry for entry in (HorovodOnSpark(), TorchDistributor(), Horovodrun(), InProcess())}


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


def elastic() -> list[str]:
    return [name for name, entry in LAUNCHERS.items() if entry.elastic]

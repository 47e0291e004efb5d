"""Which device a rank computes on: `train.device` (auto, cpu or cuda), and on CUDA which
GPU.

A rank takes the GPU Spark scheduled for its task when Spark schedules GPUs
(`spark.task.resource.gpu.amount`): under Horovod on Spark the addresses its task
service reports (`horovod.spark.task.get_available_devices`, from the task's
`TaskContext.resources()`); under TorchDistributor the CUDA_VISIBLE_DEVICES it sets from
the same resources. Otherwise (horovodrun, local mode) the GPU of its local rank, as
Horovod's examples pin it. The addresses are kept for the run's placement even where
the rank trains on the CPU, so that a cluster's GPU scheduling shows without a GPU.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

import torch

from horovod_llm.errors import UserError

log = logging.getLogger(__name__)

CUDA_VISIBLE_DEVICES = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Placement:
    """Where a rank computes: its torch device and the GPU addresses Spark gave its task."""

    device: torch.device
    spark_gpus: tuple[str, ...] = ()


def on_cpu(value):
    """`value` (tensors nested in dicts, lists and tuples: an optimizer's state dict) with
    every tensor on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(item) for item in value)
    return value


def pin_gpus(addresses: list[str]) -> None:
    """Make the task's GPUs the only ones this process sees (cuda:0 is the first), as
    TorchDistributor does: an address is an index into what the executor sees, so one
    already narrowed by CUDA_VISIBLE_DEVICES maps through it. Before CUDA starts."""
    visible = os.environ.get(CUDA_VISIBLE_DEVICES)
    if visible == ",".join(addresses):
        return  # already this process's list (TorchDistributor set it): not mapped twice
    if visible:
        listed = visible.split(",")
        addresses = [listed[int(a)] if a.isdigit() and int(a) < len(listed) else a for a in addresses]
    os.environ[CUDA_VISIBLE_DEVICES] = ",".join(addresses)


def local_rank() -> int:
    """This rank's index among the ranks of its host, from its launcher's environment."""
    for name in ("HOROVOD_LOCAL_RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def cuda_problem() -> str | None:
    """Why this process cannot compute on CUDA, or None."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU build"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} finds no usable GPU (CUDA_VISIBLE_DEVICES={os.environ.get(CUDA_VISIBLE_DEVICES)!r})"
    return None


def cuda_refused(problem: str) -> UserError:
    return UserError(
        f"train.device=cuda, but on host {socket.gethostname()} {problem}: install a CUDA build of torch where the ranks run "
        "(docs/emr.md, GPU instances), or set train.device=auto or cpu"
    )


def check_cuda_here(setting: str) -> None:
    """Refuse train.device=cuda in the driver, before preprocessing, when the ranks will
    run on this machine and it has no CUDA."""
    problem = cuda_problem() if setting == "cuda" else None
    if problem is not None:
        raise cuda_refused(problem)


def inference_device(setting: str) -> torch.device:
    """`--device` of generate, evaluate and serve: cpu; cuda (refused in one line where
    there is none); auto: cuda where torch finds a GPU."""
    problem = None if setting == "cpu" else cuda_problem()
    if setting == "cuda" and problem is not None:
        raise UserError(f"--device cuda, but {problem}: install a CUDA build of torch, or pass --device cpu")
    return torch.device("cuda" if setting != "cpu" and problem is None else "cpu")


def resolve(setting: str, spark_gpus: list[str], collectives_problem: Callable[[], str | None] = lambda: None) -> Placement:
    """The device for `train.device`: cpu; cuda (refused in one line where this process
    has none, or its collectives cannot carry CUDA tensors: `collectives_problem` says
    why); or auto, cuda where both hold, else cpu. Call before anything touches CUDA: it
    pins Spark's GPUs (`pin_gpus`) first, since the CUDA driver reads
    CUDA_VISIBLE_DEVICES once, when it starts (torch.cuda.is_available() starts it)."""
    if spark_gpus and setting != "cpu":
        pin_gpus(spark_gpus)
    if setting == "cpu":
        return Placement(torch.device("cpu"), tuple(spark_gpus))
    problem = cuda_problem()
    if problem is None:
        problem = collectives_problem()
    if problem is not None:
        if setting == "cuda":
            raise cuda_refused(problem)
        if torch.version.cuda is not None and torch.cuda.is_available():
            log.warning("train.device=auto: training on the CPU, although CUDA is available, because %s", problem)
        return Placement(torch.device("cpu"), tuple(spark_gpus))
    index = 0 if spark_gpus else local_rank() % torch.cuda.device_count()
    device = torch.device("cuda", index)
    torch.cuda.set_device(device)
    return Placement(device, tuple(spark_gpus))

"""The emr section's rules: its values, and train.num_proc against the training step's
executors. Part of every config's validation (config.validate), so that a bad EMR
setting is refused before anything starts, locally too."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from horovod_llm.config import RunConfig


_EMR_STEP_ACTIONS = ("CONTINUE", "CANCEL_AND_WAIT", "TERMINATE_CLUSTER")
# EC2 families with NVIDIA GPUs that EMR 7.x offers (g4dn T4, g5 A10G, g6 L4, g6e L40S,
# p3 V100, p4d/p4de A100, p5/p5e H100/H200).
_GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p3dn", "p4d", "p4de", "p5", "p5e", "p5en")
# A CUDA build of torch for emr.gpu (PyTorch's index of CUDA 12.8 wheels).
CUDA_TORCH_INDEX = "https://download.pytorch.org/whl/cu128"


def is_gpu_instance(instance_type: str) -> bool:
    return instance_type.split(".", 1)[0] in _GPU_FAMILIES


def emr_problems(config: RunConfig) -> list[str]:
    """The emr section's values, and train.num_proc against the training step's executors."""
    e = config.emr
    problems: list[str] = []

    def need(ok: bool, message: str) -> None:
        if not ok:
            problems.append(message)

    for name in ("s3_url", "log_uri", "horovod_wheel_url"):
        value = getattr(e, name)
        need(not value or value.startswith("s3://"), f"emr.{name} ('{value}') must be empty or an s3:// URL")
    need(
        e.release_label.startswith("emr-7."), f"emr.release_label ('{e.release_label}') must be an emr-7.x release: emr/bootstrap.sh targets Amazon Linux 2023"
    )
    need(e.core_instance_count >= 1, f"emr.core_instance_count ({e.core_instance_count}) must be at least 1: the training ranks run on core nodes")
    need(e.market in ("ON_DEMAND", "SPOT"), f"emr.market ('{e.market}') must be ON_DEMAND or SPOT")
    need(e.root_volume_gb >= 15, f"emr.root_volume_gb ({e.root_volume_gb}) must be at least 15")
    need(e.idle_timeout_s == 0 or 60 <= e.idle_timeout_s <= 604800, f"emr.idle_timeout_s ({e.idle_timeout_s}) must be 0 (off) or 60 to 604800 seconds")
    need(e.venv.startswith("/"), f"emr.venv ('{e.venv}') must be an absolute path: every node gets the venv at that same path")
    need(
        e.step_action_on_failure in _EMR_STEP_ACTIONS,
        f"emr.step_action_on_failure ('{e.step_action_on_failure}') must be one of {', '.join(_EMR_STEP_ACTIONS)}",
    )
    if e.gpu:
        need(
            is_gpu_instance(e.core_instance_type),
            f"emr.gpu=true, but emr.core_instance_type ({e.core_instance_type}) has no NVIDIA GPU: pick a GPU type such as g5.2xlarge, or set emr.gpu=false",
        )
        need(
            "/cpu" not in e.torch_index_url,
            f"emr.gpu=true, but emr.torch_index_url ({e.torch_index_url}) serves CPU builds of torch: use a CUDA index such as {CUDA_TORCH_INDEX}",
        )
    overhead = e.driver_memory_overhead.lower()
    need(
        (overhead[:-1] if overhead[-1:] in ("k", "m", "g", "t") else overhead).isdigit(),
        f"emr.driver_memory_overhead ('{e.driver_memory_overhead}') must be a Spark memory size such as 2g or 2048m",
    )
    if problems:
        return problems
    conf = e.train_conf
    sizing = ("spark.executor.instances", "spark.executor.cores", "spark.task.cpus")
    try:
        instances, cores, task_cpus = (int(conf[key]) if key in conf else None for key in sizing)
    except ValueError:
        problems.append("emr.train_conf: " + ", ".join(sizing) + " must be whole numbers")
        return problems
    gpu_sizing = ("spark.executor.resource.gpu.amount", "spark.task.resource.gpu.amount")
    try:
        executor_gpus, task_gpus = (float(conf[key]) if key in conf else None for key in gpu_sizing)
    except ValueError:
        problems.append("emr.train_conf: " + ", ".join(gpu_sizing) + " must be numbers")
        return problems
    if e.gpu:
        need(
            bool(executor_gpus and task_gpus),
            "emr.gpu=true needs emr.train_conf to set spark.executor.resource.gpu.amount and spark.task.resource.gpu.amount: "
            "without them Spark schedules no GPU and the ranks train on the CPU",
        )
    if task_cpus is not None and cores is not None:
        need(1 <= task_cpus <= cores, f"emr.train_conf spark.task.cpus ({task_cpus}) must be between 1 and spark.executor.cores ({cores})")
    if instances is not None and cores is not None and task_cpus:
        # Every rank is one Spark task and all of them must run at once.
        per_executor = cores // task_cpus
        detail = f"spark.executor.instances {instances} x spark.executor.cores {cores} // spark.task.cpus {task_cpus}"
        if executor_gpus and task_gpus:
            per_executor = min(per_executor, int(executor_gpus / task_gpus + 1e-9))
            detail += f", and at most spark.executor.resource.gpu.amount {executor_gpus:g} // spark.task.resource.gpu.amount {task_gpus:g} per executor"
        slots = instances * per_executor
        need(
            config.train.num_proc <= slots,
            f"train.num_proc ({config.train.num_proc}) needs that many task slots at once, but emr.train_conf gives {slots} ({detail}): "
            "lower train.num_proc or add executors",
        )
    if conf:
        need(
            conf.get("spark.dynamicAllocation.enabled", "").lower() == "false",
            "emr.train_conf must set spark.dynamicAllocation.enabled: 'false': Horovod needs all its executors for the whole run",
        )
        # EMR 5.32+/6.2+ resizes executors to each node by default (heterogeneous
        # executors): the task slots counted above would not be the ones YARN grants.
        need(
            conf.get("spark.yarn.heterogeneousExecutors.enabled", "").lower() == "false",
            "emr.train_conf must set spark.yarn.heterogeneousExecutors.enabled: 'false': EMR would resize the executors the ranks are counted on",
        )
    return problems

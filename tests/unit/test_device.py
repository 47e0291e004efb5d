"""train.device (training/device.py): where a rank computes, and which GPU Spark gave it.
This torch is a CPU build: the CUDA refusals and the GPU bookkeeping are real here; a
rank computing on CUDA through the launchers has not run (bench/gpu_check.py runs the
model's bf16 step on a GPU with a loop of its own)."""

import os

import pytest
import torch

from horovod_llm.errors import UserError
from horovod_llm.launchers.cluster import Executor, executor_slots, task_slots
from horovod_llm.training import device


@pytest.fixture(autouse=True)
def visible_devices(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_cuda_without_cuda_is_refused_in_one_line():
    assert torch.version.cuda is None  # the suite's CPU build of torch
    with pytest.raises(UserError) as refused:
        device.resolve("cuda", [])
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("train.device=cuda, but on host ") and "is a CPU build" in message and "train.device=auto or cpu" in message


def test_auto_trains_on_the_cpu_without_cuda_and_keeps_sparks_gpus():
    assert device.resolve("auto", []).device == torch.device("cpu")
    placed = device.resolve("auto", ["1"])
    assert placed.device == torch.device("cpu") and placed.spark_gpus == ("1",)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1"  # pinned before any CUDA work


def test_cpu_leaves_the_gpus_alone():
    placed = device.resolve("cpu", ["0", "1"])
    assert placed == device.Placement(torch.device("cpu"), ("0", "1"))
    assert "CUDA_VISIBLE_DEVICES" not in os.environ


def test_collectives_without_cuda_support_refuse_cuda(monkeypatch):
    monkeypatch.setattr(device, "cuda_problem", lambda: None)  # as on a GPU host
    with pytest.raises(UserError, match="built without NCCL"):
        device.resolve("cuda", [], collectives_problem=lambda: "this Horovod was built without NCCL")


def test_sparks_gpus_are_pinned_before_anything_asks_cuda(monkeypatch):
    # The CUDA driver reads CUDA_VISIBLE_DEVICES once, when torch.cuda first starts it:
    # pinned after that, every rank of a host would land on its first GPU.
    seen = []
    monkeypatch.setattr(device, "cuda_problem", lambda: seen.append(os.environ.get("CUDA_VISIBLE_DEVICES")) or "no GPU here")
    device.resolve("auto", ["3"], collectives_problem=lambda: seen.append("collectives") or None)
    assert seen == ["3"]  # pinned first; the collectives asked only where CUDA works


def test_an_address_maps_through_a_narrowed_visible_list(monkeypatch):
    # Spark's address is an index into what the executor sees (as TorchDistributor reads it)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6")
    device.pin_gpus(["1"])
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    device.pin_gpus(["5"])  # already the process's own list: unchanged
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,2")
    device.pin_gpus(["1", "2"])  # TorchDistributor's own list, not mapped through itself ("2,2")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "1,2"


def test_local_rank_comes_from_the_launchers_environment(monkeypatch):
    for name in ("HOROVOD_LOCAL_RANK", "LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert device.local_rank() == 0
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert device.local_rank() == 3
    monkeypatch.setenv("HOROVOD_LOCAL_RANK", "1")
    assert device.local_rank() == 1


def test_task_slots_count_gpus_when_spark_schedules_them():
    four_cores_two_gpus = Executor("0", "a", 4, gpus=2)
    assert executor_slots(four_cores_two_gpus, 1) == 4  # GPUs not scheduled: cores only
    assert executor_slots(four_cores_two_gpus, 1, 1.0) == 2
    assert executor_slots(four_cores_two_gpus, 1, 0.5) == 4  # half a GPU per task
    assert executor_slots(four_cores_two_gpus, 4, 0.5) == 1  # cores bound it again
    assert executor_slots(Executor("1", "b", 8), 1, 1.0) == 0  # no GPU, no slot
    assert task_slots([four_cores_two_gpus, Executor("1", "b", 2, gpus=1)], 1, 1.0) == 3


def test_inference_device_flags(capsys):
    from horovod_llm.cli import main

    assert device.inference_device("cpu") == device.inference_device("auto") == torch.device("cpu")
    for command in (["generate", "--prompt", "x"], ["evaluate", "--text-file", "t.txt"], ["serve"]):
        # refused before the checkpoint is even looked for
        assert main([*command, "--checkpoint", "/nonexistent", "--device", "cuda"]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]
        assert error.startswith("error: --device cuda, but torch ") and error.endswith("install a CUDA build of torch, or pass --device cpu"), error


@pytest.mark.parametrize("command", ["run", "train"])
def test_train_device_cuda_is_refused_before_spark_or_the_dataset(command, tmp_path, capsys):
    from horovod_llm.cli import main
    from tests.conftest import TINY_CONFIG

    assert main([command, "--config", str(TINY_CONFIG), f"output_url={tmp_path / 'run'}", "train.device=cuda"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: train.device=cuda, but on host ") and "is a CPU build" in error, error
    assert not (tmp_path / "run").exists()  # nothing written, no Spark session started


def test_ranks_on_cuda_and_the_cpu_at_once_are_refused():
    from horovod_llm.training.loop import refuse_mixed_devices

    refuse_mixed_devices([{"host": "a", "device": "cuda:0"}, {"host": "b", "device": "cuda:1"}])
    refuse_mixed_devices([{"host": "a", "device": "cpu"}, {"host": "b", "device": "cpu"}])
    with pytest.raises(UserError) as refused:
        refuse_mixed_devices([{"host": "a", "device": "cuda:0"}, {"host": "b", "device": "cpu"}])
    assert str(refused.value) == (
        "the ranks would train on cpu and cuda at once (on the CPU: b): set train.device=cpu, or give every host a GPU and a CUDA build of torch"
    )

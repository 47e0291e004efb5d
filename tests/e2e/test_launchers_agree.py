"""Horovod and torch.distributed train alike: a run under horovod.spark.run and one under
Spark's TorchDistributor, from the same seed, log the same losses and end with the same
weights within the two-rank tolerance, and a checkpoint of either resumes under the other."""

import json
import shutil

import pytest
import torch

from horovod_llm import layout, storage
from horovod_llm.launchers.launch import launch_training
from tests.e2e.test_train import with_output
from tests.e2e.test_training_fidelity import TWO_RANK_TOLERANCE, final_state, interrupted_at

pytestmark = [pytest.mark.spark, pytest.mark.horovod]

LAUNCHERS = {"spark": "horovod", "torch_distributor": "torch"}


def losses(out: str) -> list[float]:
    lines = storage.read_text(storage.join(layout.stats_url(out), "steps.jsonl")).splitlines()
    return [json.loads(line)["loss"] for line in lines]


def test_both_launchers_give_the_same_run_and_resume_each_other(tiny_dataset, spark, tmp_path):
    config, _ = tiny_dataset
    runs, finals = {}, {}
    for launcher, backend in LAUNCHERS.items():
        out = str(tmp_path / launcher)
        for part in ("dataset", "tokenizer", "embeddings"):
            shutil.copytree(f"{config.output_url}/{part}", f"{out}/{part}")
        summary = launch_training(with_output(config, out, launcher=launcher, keep_last=5), spark)["summary"]
        assert summary["backend"] == backend and summary["steps"] == 8 and summary["ranks"] == 2
        runs[launcher], finals[launcher] = out, final_state(out)
    assert losses(runs["spark"]) == pytest.approx(losses(runs["torch_distributor"]), rel=1e-5)
    for name, tensor in finals["spark"].items():
        assert torch.allclose(tensor, finals["torch_distributor"][name], atol=TWO_RANK_TOLERANCE, rtol=0), name

    # Each run loses its last checkpoint and resumes from step 4 under the other launcher.
    for launcher, other in (("spark", "torch_distributor"), ("torch_distributor", "spark")):
        interrupted_at(runs[launcher], 4)
        summary = launch_training(with_output(config, runs[launcher], launcher=other, keep_last=5), spark)["summary"]
        assert summary["resumed_from_step"] == 4 and summary["backend"] == LAUNCHERS[other]
        resumed = final_state(runs[launcher])
        for name, tensor in finals[launcher].items():
            assert torch.allclose(tensor, resumed[name], atol=TWO_RANK_TOLERANCE, rtol=0), name

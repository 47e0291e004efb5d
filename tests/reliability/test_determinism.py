"""Same seed and config, same loss curve: exactly on 1 rank, within a documented
tolerance on 2 (Gloo may sum floating-point gradients in another order)."""

import json
import shutil

import pytest

from horovod_llm import layout, storage
from horovod_llm.launchers.launch import launch_training
from tests.e2e.test_train import with_output

TWO_RANK_RELATIVE_TOLERANCE = 1e-5


def copy_dataset(config, out):
    for part in ("dataset", "tokenizer", "embeddings"):
        shutil.copytree(f"{config.output_url}/{part}", out / part)
    return str(out)


def loss_curve(out):
    lines = storage.read_text(storage.join(layout.stats_url(out), "steps.jsonl")).splitlines()
    return [(r["step"], r["loss"], r["grad_norm"], r["accuracy"]) for r in map(json.loads, lines)]


def twice(config, tmp_path, spark=None, **train):
    curves = []
    for name in ("first", "second"):
        out = copy_dataset(config, tmp_path / name)
        launch_training(with_output(config, out, max_steps=8, log_interval=1, **train), spark)
        curves.append(loss_curve(out))
    return curves


def test_one_rank_gives_an_identical_loss_curve(tiny_dataset, tmp_path):
    config, _ = tiny_dataset
    first, second = twice(config, tmp_path, launcher="local", num_proc=1)
    assert len(first) == 8 and first == second


@pytest.mark.spark
@pytest.mark.horovod
def test_two_ranks_give_the_same_loss_curve_within_tolerance(tiny_dataset, tmp_path, spark):
    config, _ = tiny_dataset
    first, second = twice(config, tmp_path, spark, launcher="spark")
    assert [r[0] for r in first] == [r[0] for r in second] == list(range(1, 9))
    for a, b in zip(first, second, strict=True):
        for x, y in zip(a[1:], b[1:], strict=True):
            assert x == pytest.approx(y, rel=TWO_RANK_RELATIVE_TOLERANCE)

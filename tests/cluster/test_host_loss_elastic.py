"""A worker host lost in elastic mode (host_loss.py): the survivor resets and goes on alone
from its last commit, within HOST_LOSS_RESET_WITHIN_S of the loss; a lost rank 0 hands
logging, evaluation and checkpoints to the new rank 0."""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.host_loss import (
    HOST_LOSS_RESET_WITHIN_S,
    lose_rank_host,
    placement,
    preprocessed_cluster,
    start_training,
    trained_its_budget,
)
from tests.cluster.jobs import read_s3

pytestmark = [pytest.mark.spark, pytest.mark.horovod, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_dataset):
    # A spare worker: after the first case's loss two remain, and no case waits for Spark
    # to drop the lost one before the next starts.
    with preprocessed_cluster(tmp_path_factory.mktemp("cluster"), tiny_dataset, workers=3) as started:
        yield started


@pytest.mark.parametrize("rank, moment", [(0, "after-checkpoint"), (1, "during-commit")], ids=lambda v: str(v))
def test_elastic_training_goes_on_without_a_lost_host(cluster, rank, moment):
    name = f"elastic-{rank}-{moment}"
    out = f"s3://runs/{name}"
    process, log = start_training(cluster, name, "train.elastic=true", "train.min_proc=1")
    lost, lost_at, _ = lose_rank_host(cluster, out, rank, moment)
    # The survivor trains again at size 1 (its new placement, written on entering the loop).
    deadline = lost_at + HOST_LOSS_RESET_WITHIN_S + 60
    while time.monotonic() < deadline and len(placement(cluster, out)["ranks"]) != 1:
        assert process.poll() is None, log.read_text(errors="replace")[-5000:]
        time.sleep(0.5)
    reset_after = time.monotonic() - lost_at
    process.wait(timeout=900)
    output = log.read_text(errors="replace")
    assert process.returncode == 0, output[-5000:]
    summary = json.loads(read_s3(cluster, f"{out}/stats/summary.json"))
    assert trained_its_budget(summary) and summary["resumed_from_step"] == 0, summary  # carried on, no restart
    ranks = [json.loads(line)["ranks"] for line in read_s3(cluster, f"{out}/stats/steps.jsonl").splitlines()]
    assert ranks[0] == 2 and ranks[-1] == 1, ranks  # the statistics show the size change
    (survivor,) = summary["placement"]
    assert survivor["rank"] == 0 and survivor["host"] != lost.name
    assert read_s3(cluster, f"{out}/checkpoints/step-{summary['steps']:08d}/COMPLETE") is not None  # the new rank 0 checkpoints
    print(f"elastic, rank {rank}'s host {lost.name} lost {moment}: training again at 1 rank {reset_after:.0f} s later")
    assert reset_after < HOST_LOSS_RESET_WITHIN_S, f"the reset came {reset_after:.0f} s after the loss"

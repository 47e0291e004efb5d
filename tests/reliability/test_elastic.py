"""Elastic mode: horovod.spark.run_elastic keeps training when a rank is lost, and takes
the rank back when Spark re-runs its task."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from horovod_llm import checkpoint, layout, storage
from horovod_llm.errors import UserError
from horovod_llm.launchers.launch import launch_training
from tests.conftest import TINY_CONFIG
from tests.e2e.test_train import with_output
from tests.reliability.test_rank_failure import rank_process

pytestmark = [pytest.mark.spark, pytest.mark.horovod]


def train_elastic_and_kill_rank_1(fresh_run: str, settings: list[str]) -> str:
    """`horovod-llm train` on the tiny dataset in elastic mode with `settings`; rank 1 is
    SIGKILLed once the first checkpoint is complete. The job must still succeed; its stderr."""
    command = [
        sys.executable, "-m", "horovod_llm.cli", "train", "--config", str(TINY_CONFIG), f"output_url={fresh_run}",
        "spark.master=local[2,4]", "train.elastic=true", "train.batch_size=64", "train.checkpoint_interval=20",
        "train.log_interval=1", "train.elastic_commit_interval=5", *settings,
    ]  # fmt: skip
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    training = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (checkpoint.complete_checkpoints(fresh_run) and rank_process(1, training.pid)):
        assert training.poll() is None and time.monotonic() < deadline, training.communicate()[1][-3000:]
        time.sleep(0.1)
    os.kill(rank_process(1, training.pid).pid, signal.SIGKILL)
    try:
        _, stderr = training.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        os.killpg(training.pid, signal.SIGKILL)  # never leave a job (JVM, ranks) behind the test
        raise
    assert training.returncode == 0, stderr[-4000:]
    return stderr


def test_a_lost_rank_does_not_stop_elastic_training(fresh_run):
    train_elastic_and_kill_rank_1(fresh_run, ["train.max_steps=600", "train.keep_last=20"])
    summary = storage.read_json(storage.join(layout.stats_url(fresh_run), "summary.json"))
    assert summary["steps"] == 600 and summary["resumed_from_step"] == 0  # no restart: it carried on
    assert summary["collectives"]["elastic"] is True
    ranks = [json.loads(line)["ranks"] for line in storage.read_text(storage.join(layout.stats_url(fresh_run), "steps.jsonl")).splitlines()]
    assert ranks[0] == 2 and 1 in ranks  # trained on with one rank after the loss ...
    assert ranks[-1] == 2  # ... and with two again once Spark re-ran the lost rank's task
    assert checkpoint.complete_checkpoints(fresh_run)[-1][0] == 600


def test_elastic_needs_task_retries_and_the_spark_launcher(fresh_run, tiny_dataset, spark):
    config, _ = tiny_dataset
    with pytest.raises(UserError, match=r"allows no retry: use spark.master=local\[N,4\]"):
        launch_training(with_output(config, fresh_run, launcher="spark", elastic=True), spark)
    from horovod_llm.config import load_config

    with pytest.raises(UserError, match="train.elastic=true needs train.launcher=spark"):
        load_config(TINY_CONFIG, ["train.elastic=true", "train.launcher=horovodrun"])


def test_elastic_training_counts_the_time_a_reset_cost_against_the_budget(fresh_run):
    """A user with 45 s of cluster time gets 45 s, not 45 s plus the reset: the wall time
    from the last commit to the restart (and the steps it undid) counts as trained."""
    budget_seconds = 45.0
    stderr = train_elastic_and_kill_rank_1(fresh_run, ["train.max_steps=0", f"train.max_minutes={budget_seconds / 60}"])
    summary = storage.read_json(storage.join(layout.stats_url(fresh_run), "summary.json"))
    assert summary["stopped_by"] == "budget" and summary["resumed_from_step"] == 0
    records = [json.loads(line) for line in storage.read_text(storage.join(layout.stats_url(fresh_run), "steps.jsonl")).splitlines()]
    assert 1 in [r["ranks"] for r in records]  # the reset happened while training
    lost = [float(m) for m in re.findall(r"the ([\d.]+) s since the last commit count against the budget", stderr)]
    assert lost and max(lost) > 1.0, stderr[-3000:]
    # Trained seconds advance with the wall clock across the reset, not by less.
    first, last = records[0], records[-1]
    wall, trained = last["time"] - first["time"], last["trained_seconds"] - first["trained_seconds"]
    step_time = max(r["step_time_s"] for r in records)
    assert abs(wall - trained) < 1.0 + 2 * step_time, (wall, trained, lost)
    assert budget_seconds <= summary["trained_seconds"] < budget_seconds + 5 * step_time + 2.0

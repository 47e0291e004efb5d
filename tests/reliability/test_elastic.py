"""Elastic mode: horovod.spark.run_elastic keeps training when a rank is lost, and takes
the rank back when Spark re-runs its task."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from horovod_llm import checkpoint, layout, storage
from horovod_llm.errors import UserError
from horovod_llm.launch import launch_training
from tests.conftest import TINY_CONFIG
from tests.e2e.test_train import with_output
from tests.reliability.test_rank_failure import rank_process

pytestmark = [pytest.mark.spark, pytest.mark.horovod]


def test_a_lost_rank_does_not_stop_elastic_training(fresh_run):
    command = [
        sys.executable, "-m", "horovod_llm.cli", "train", "--config", str(TINY_CONFIG), f"output_url={fresh_run}",
        "spark.master=local[2,4]", "train.elastic=true", "train.max_steps=600", "train.batch_size=64",
        "train.checkpoint_interval=20", "train.log_interval=1", "train.elastic_commit_interval=5", "train.keep_last=20",
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
    summary = storage.read_json(storage.join(layout.stats_url(fresh_run), "summary.json"))
    assert summary["steps"] == 600 and summary["resumed_from_step"] == 0  # no restart: it carried on
    assert summary["horovod"]["elastic"] is True
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

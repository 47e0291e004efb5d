"""train.launcher=torch_distributor where Horovod is not installed: Spark's TorchDistributor
starts torchrun in each task of a barrier stage, and the ranks train with torch.distributed
(Gloo over loopback), the same worker as under Horovod.

Collected only by tests/test_without_horovod.py, which runs this suite in a process whose
imports cannot find Horovod (tests/hide_horovod on PYTHONPATH), nor can any process it
starts: the CLI, Spark's Python workers and torchrun's ranks. The guarantees are those of
tests/reliability/test_rank_failure.py under Horovod.
"""

import json
import re
import subprocess
import sys
import time

import pytest

from horovod_llm import layout, storage
from horovod_llm.errors import UserError
from horovod_llm.launchers.launch import launch_training
from tests.conftest import TINY_CONFIG
from tests.e2e.test_train import check_run, with_output
from tests.reliability.test_rank_failure import KILLED_RANK_FAILS_WITHIN_S, frozen_rank_stall, killed_rank_failure, restarted_after_a_killed_rank

pytestmark = pytest.mark.spark


def test_horovod_is_not_installed_here():
    with pytest.raises(ModuleNotFoundError):
        import horovod.torch  # noqa: F401
    probe = subprocess.run([sys.executable, "-c", "import horovod"], capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'horovod'" in probe.stderr


def test_two_ranks_from_the_cli(fresh_run, tiny_dataset):
    """`horovod-llm train` with two torch.distributed ranks: the outputs of every launcher,
    the ranks' logs on stderr, nothing on stdout; bound to cores of their own where asked
    (each rank's place on its host counted from the ranks' host names)."""
    config, _ = tiny_dataset
    command = [sys.executable, "-m", "horovod_llm.cli", "train", "--config", str(TINY_CONFIG), f"output_url={fresh_run}", "train.launcher=torch_distributor"]
    command.append("train.bind_cores=all")
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[rank 0] horovod_llm.training.loop: step 8/8" in done.stderr and "starting 2 ranks with Spark's TorchDistributor" in done.stderr
    summary = check_run(fresh_run, config, bind_cores="all")
    assert summary["backend"] == "torch" and summary["launch"]["launcher"] == "torch_distributor"
    assert summary["collectives"]["backend"] == "torch" and summary["collectives"]["cycle_time_ms"] is None
    assert summary["collectives"]["gradient_reduction"] == "shared_memory"  # both ranks on this host
    assert [p["gloo_iface"] for p in summary["placement"]] == ["lo", "lo"]
    assert done.stdout == ""  # stdout carries generated text only
    steps = [json.loads(line) for line in storage.read_text(storage.join(layout.stats_url(fresh_run), "steps.jsonl")).splitlines()]
    assert all(0 < r["allreduce_share"] < 1 for r in steps)  # the reduction is timed apart


def test_one_rank_in_process_with_torch_distributed(fresh_run, tiny_dataset):
    config, _ = tiny_dataset
    summary = launch_training(with_output(config, fresh_run, launcher="local", num_proc=1, max_steps=4))["summary"]
    assert summary["backend"] == "torch" and summary["ranks"] == 1 and summary["steps"] == 4
    # again in the same process: the first run left its process group
    summary = launch_training(with_output(config, fresh_run, launcher="local", num_proc=1, max_steps=6))["summary"]
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 6


@pytest.mark.parametrize("launcher", ["spark", "horovodrun"])
def test_the_horovod_launchers_are_refused_in_one_line(fresh_run, tiny_dataset, launcher):
    config, _ = tiny_dataset
    with pytest.raises(UserError, match=rf"^train.launcher={launcher} needs Horovod, which is not installed here: .*train.launcher=torch_distributor$"):
        launch_training(with_output(config, fresh_run, launcher=launcher))


# The same guarantees as under Horovod (tests/reliability/test_rank_failure.py).


@pytest.mark.parametrize("killed", [1, 0])
def test_a_killed_rank_fails_the_job_fast_and_names_it(fresh_run, tiny_dataset, spark, killed):
    message = str(killed_rank_failure(fresh_run, tiny_dataset, spark, "torch_distributor", killed, within_s=KILLED_RANK_FAILS_WITHIN_S))
    assert re.match(rf"training rank {killed} exited with status -9 \(SIGKILL\)", message), message


def test_max_restarts_resumes_from_the_latest_checkpoint_and_completes(fresh_run, tiny_dataset, spark):
    assert restarted_after_a_killed_rank(fresh_run, tiny_dataset, spark, "torch_distributor")["backend"] == "torch"


def test_a_frozen_rank_fails_the_job_at_the_stall_timeout_naming_the_ranks_last_heard(fresh_run, tiny_dataset, spark):
    frozen_rank_stall(fresh_run, tiny_dataset, spark, "torch_distributor")


def test_not_enough_task_slots_fails_in_seconds_with_the_numbers(fresh_run, tiny_dataset, spark):
    config, _ = tiny_dataset
    started = time.monotonic()
    with pytest.raises(UserError, match=r"train.num_proc=3 ranks need 3 task slots of spark.task.cpus=1 cores at once, but the executors give 2"):
        launch_training(with_output(config, fresh_run, launcher="torch_distributor", num_proc=3), spark)
    assert time.monotonic() - started < 30  # a barrier stage would wait for slots for good


def test_elastic_mode_is_refused_in_one_line(fresh_run, tiny_dataset):
    config, _ = tiny_dataset
    with pytest.raises(UserError, match=r"train.elastic=true needs train.launcher=spark \(Horovod elastic; 'torch_distributor' has no elastic mode\)"):
        launch_training(with_output(config, fresh_run, launcher="torch_distributor", elastic=True))

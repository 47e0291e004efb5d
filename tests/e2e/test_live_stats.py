"""Watching a run while it trains (issue 29): TensorBoard's events and the JSONL records
are readable during training, a killed run keeps them up to its last log line, and a
resumed run continues the same curves with no step twice and none missing."""

import os
import signal
import subprocess
import sys
import time

import pytest

from horovod_llm import checkpoint, layout
from horovod_llm.data.manifest import read_manifest
from horovod_llm.training.job import steps_per_epoch
from horovod_llm.training.stats import read_records
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.horovod

LOG_INTERVAL = 5
BATCH = 64
CHECKPOINT_INTERVAL = 40


def train_command(out, *overrides):
    # One rank in the CLI's own process (train.launcher=local), so that SIGKILL ends the
    # whole run at once; a batch of 64 keeps steps long enough to watch.
    return [
        sys.executable, "-m", "horovod_llm.cli", "train", "--config", str(TINY_CONFIG), f"output_url={out}", "train.launcher=local", "train.num_proc=1",
        f"train.batch_size={BATCH}", f"train.log_interval={LOG_INTERVAL}", f"train.checkpoint_interval={CHECKPOINT_INTERVAL}", "train.eval_interval=20",
        *overrides,
    ]  # fmt: skip


def logged_steps(out, tag="train/loss") -> list[int]:
    """The steps of a tag as TensorBoard reads the run's folder (every event file, with
    its purge markers applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = os.path.join(layout.stats_url(out), "tensorboard")
    if not os.path.isdir(folder):
        return []
    accumulator = EventAccumulator(folder, size_guidance={"scalars": 0})
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [event.step for event in accumulator.Scalars(tag)]


def scalar_tags(out) -> list[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(os.path.join(layout.stats_url(out), "tensorboard"))
    accumulator.Reload()
    return accumulator.Tags()["scalars"]


def expected_steps(out, last: int) -> list[int]:
    """The steps the loop logs up to `last`: every LOG_INTERVAL, each epoch's end, the last."""
    per_epoch = steps_per_epoch(read_manifest(out).splits["train"].windows, BATCH)
    return sorted({*range(LOG_INTERVAL, last + 1, LOG_INTERVAL), *range(per_epoch, last + 1, per_epoch), last})


def jsonl_steps(out, name="steps.jsonl") -> list[int]:
    return [r["step"] for r in read_records(os.path.join(layout.stats_url(out), name))]


def test_events_are_live_a_killed_run_keeps_them_and_a_resume_continues_them(fresh_run):
    training = subprocess.Popen(train_command(fresh_run, "train.max_steps=100000"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Read while it trains: the events reach TensorBoard as the steps are logged, and
        # past the first checkpoint so that the kill below loses logged steps.
        deadline = time.monotonic() + 240
        seen = []
        while not seen or seen[-1] < CHECKPOINT_INTERVAL + 3 * LOG_INTERVAL:
            assert training.poll() is None and time.monotonic() < deadline, training.communicate()[1][-3000:]
            time.sleep(0.3)
            seen = logged_steps(fresh_run)
        assert training.poll() is None  # still training: these events were read live
        assert seen == expected_steps(fresh_run, seen[-1])
        os.kill(training.pid, signal.SIGKILL)
    finally:
        training.kill()
        training.communicate()

    # The killed run's events and records reach its last log line, and agree.
    killed_steps = jsonl_steps(fresh_run)
    assert killed_steps[-1] >= seen[-1]
    assert logged_steps(fresh_run) == killed_steps
    latest = checkpoint.complete_checkpoints(fresh_run)[-1][0]
    assert latest < killed_steps[-1]  # steps logged after the checkpoint, to be trained again

    end = killed_steps[-1] + 2 * LOG_INTERVAL + 1
    resumed = subprocess.run(train_command(fresh_run, f"train.max_steps={end}"), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from step {latest + 1}" in resumed.stderr
    expected = expected_steps(fresh_run, end)
    # One series: the first run's steps up to the checkpoint, then the resumed run's.
    assert jsonl_steps(fresh_run) == expected
    assert logged_steps(fresh_run) == expected
    evals = jsonl_steps(fresh_run, "evals.jsonl")
    assert logged_steps(fresh_run, "val/loss") == evals == sorted(set(evals))
    assert len(os.listdir(os.path.join(layout.stats_url(fresh_run), "tensorboard"))) == 2  # one event file per run
    # The terminal says where to watch.
    assert f"tensorboard --logdir {layout.stats_url(fresh_run)}/tensorboard" in resumed.stderr
    first = read_records(os.path.join(layout.stats_url(fresh_run), "steps.jsonl"))[0]
    assert {"lr", "tokens_per_s", "mfu", "allreduce_share"} <= set(first)
    assert {"perf/mfu", "perf/allreduce_share", "train/lr", "perf/tokens_per_s", "epoch/train_loss"} <= set(scalar_tags(fresh_run))

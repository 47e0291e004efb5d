"""2 real Horovod ranks (Gloo over loopback) train a few steps, by each launcher."""

import dataclasses
import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from horovod_llm import checkpoint, layout, storage
from horovod_llm.checkpoint import load_checkpoint
from horovod_llm.inference.generate import generate_text
from horovod_llm.inference.sampling import Sampling
from horovod_llm.launchers.horovodrun import horovodrun_command
from horovod_llm.launchers.launch import launch_training
from horovod_llm.training.affinity import binds
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.horovod

STEP_FIELDS = {"step", "epoch", "loss", "accuracy", "grad_norm", "lr", "step_time_s", "tokens_per_s", "peak_rss_mb", "page_faults_per_step"}


def with_output(config, out, **train):
    return dataclasses.replace(config, output_url=out, train=dataclasses.replace(config.train, **train))


def check_run(out, config, bind_cores=None):
    steps = [json.loads(line) for line in storage.read_text(storage.join(layout.stats_url(out), "steps.jsonl")).splitlines()]
    assert [s["step"] for s in steps] == [2, 4, 6, 8]
    for record in steps:
        assert set(record) >= STEP_FIELDS
        assert math.isfinite(record["loss"]) and math.isfinite(record["grad_norm"])
        assert record["tokens_per_s"] > 0 and 0 <= record["accuracy"] <= 1 and record["peak_rss_mb"] > 50
        assert record["page_faults_per_step"] >= 0
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns, even in 8 steps
    epochs = [json.loads(line) for line in storage.read_text(storage.join(layout.stats_url(out), "epochs.jsonl")).splitlines()]
    assert epochs[-1]["seconds"] > 0 and math.isfinite(epochs[-1]["val_loss"])
    summary = storage.read_json(storage.join(layout.stats_url(out), "summary.json"))
    assert summary["ranks"] == 2 and summary["steps"] == 8
    check_cores(summary, bind_cores or config.train.bind_cores)
    complete = checkpoint.complete_checkpoints(out)
    assert [step for step, _ in complete] == [4, 8]
    assert summary["model_zip_url"].endswith("model.zip")
    from_zip = load_checkpoint(summary["model_zip_url"])
    assert from_zip.step == 8
    loaded = load_checkpoint(out)
    assert loaded.step == 8 and loaded.config.model.n_embd == config.model.n_embd
    text = generate_text(loaded, "KING:\n", Sampling(max_new_tokens=15, temperature=0.8, top_k=20, seed=1))
    assert text.startswith("KING:\n") and len(text) > len("KING:\n")
    return summary


def check_cores(summary, setting):
    """train.bind_cores=`setting`: where the ranks it binds fill this host's cores with
    their threads, each rank's on cores of its own (as the kernel reports them), together
    all of them; else unbound."""
    cores, threads = [p["cores"] for p in summary["placement"]], summary["threads_per_rank"]
    allowed = os.sched_getaffinity(0)  # the ranks' parent processes inherit this test's
    if binds(setting, summary["backend"]) and summary["ranks"] * threads == len(allowed):
        assert None not in cores, cores
        assert all(len(mine) == threads for mine in cores)
        assert sorted(c for mine in cores for c in mine) == sorted(allowed)
    else:
        assert cores == [None] * summary["ranks"]


def test_two_ranks_with_horovod_spark_run(fresh_run, tiny_dataset, spark):
    config, _ = tiny_dataset
    result = launch_training(with_output(config, fresh_run, launcher="spark"), spark)
    assert result["rank"] == 0 and result["summary"]["ranks"] == 2
    assert result["summary"]["collectives"]["gradient_reduction"] == "shared_memory"  # both ranks on this host
    check_run(fresh_run, config)


def test_two_ranks_with_horovodrun(fresh_run, tiny_dataset):
    config, _ = tiny_dataset
    result = launch_training(with_output(config, fresh_run, launcher="horovodrun"))
    assert result["summary"]["ranks"] == 2
    check_run(fresh_run, config)


def test_documented_horovodrun_command_runs_the_worker(fresh_run, tiny_dataset, tmp_path):
    """The command the README documents, run as a user would (not through the launcher)."""
    config, _ = tiny_dataset
    command = horovodrun_command(str(TINY_CONFIG), 2, 60) + [
        f"output_url={fresh_run}",
        "train.max_steps=2",
        "train.log_interval=1",
        "train.checkpoint_interval=0",
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert [s for s, _ in checkpoint.complete_checkpoints(fresh_run)] == [2]
    assert "step 2/2" in completed.stdout + completed.stderr


def test_one_rank_in_process(fresh_run, tiny_dataset):
    config, _ = tiny_dataset
    stdout = sys.stdout
    # in fp16, whose gradient scaler the other runs leave out
    result = launch_training(with_output(config, fresh_run, launcher="local", num_proc=1, max_steps=3, checkpoint_interval=0, precision="fp16"))
    assert sys.stdout is stdout  # the rank's stdout-to-stderr swap ends with it: `run` prints its sample on stdout
    assert result["summary"]["ranks"] == 1 and result["summary"]["steps"] == 3
    # the rank flushes subnormals to zero (precision.flush_denormals): observed in its thread
    assert result["summary"]["precision"] == {"setting": "fp16", "denormals_flushed": True, "used": "fp16"} and result["summary"]["device"] == "cpu"
    assert [s for s, _ in checkpoint.complete_checkpoints(fresh_run)] == [3]


def test_a_rerun_resumes_from_the_latest_checkpoint(fresh_run, tiny_dataset):
    """... also under another precision: checkpoints hold fp32 weights whatever the run trained in."""
    config, _ = tiny_dataset
    first = with_output(config, fresh_run, launcher="local", num_proc=1, max_steps=4, checkpoint_interval=2, precision="fp32")
    launch_training(first)
    assert [s for s, _ in checkpoint.complete_checkpoints(fresh_run)] == [2, 4]
    result = launch_training(with_output(config, fresh_run, launcher="local", num_proc=1, max_steps=6, checkpoint_interval=2, precision="bf16"))
    assert result["summary"]["steps"] == 6 and result["summary"]["precision"]["used"] == "bf16"
    complete = dict(checkpoint.complete_checkpoints(fresh_run))
    assert [storage.read_json(storage.join(complete[s], "meta.json"))["precision"] for s in (4, 6)] == ["fp32", "bf16"]
    assert {t.dtype for t in load_checkpoint(complete[6]).model.state_dict().values()} == {torch.float32}
    optimizer = torch.load(io.BytesIO(storage.read_bytes(storage.join(complete[6], "optimizer.pt"))), weights_only=True)
    assert {t.dtype for moments in optimizer["state"].values() for t in moments.values()} == {torch.float32}
    steps = [json.loads(line)["step"] for line in storage.read_text(storage.join(layout.stats_url(fresh_run), "steps.jsonl")).splitlines()]
    assert steps == [2, 4, 6]  # the records of the first run are kept, none repeated
    again = launch_training(with_output(config, fresh_run, launcher="local", num_proc=1, max_steps=6))
    assert again["steps"] == 6  # nothing left to train


def test_a_rank_keeps_the_memory_its_steps_free(fresh_run, tiny_dataset):
    """Logits of over 32 MB a step (1,100 windows x 32 tokens x 300 pieces x 4 bytes),
    which glibc's defaults map and unmap at every step: a rank keeps them mapped
    (training/allocator.py), so once its heap has grown to a step's needs, its steps
    take almost no page faults (without it: over 60,000 a step)."""
    config, manifest = tiny_dataset
    logits_pages = 1100 * manifest.window_size * manifest.tokenizer.vocab_size * 4 / 4096
    assert logits_pages > 32 * 1024 * 1024 / 4096  # over glibc's largest dynamic threshold
    # One rank, so that 8 steps stay in one epoch: a new epoch's reader and the epoch's
    # evaluation would grow the heap once more.
    run = with_output(
        config, fresh_run, launcher="horovodrun", num_proc=1, batch_size=1100, max_steps=8, log_interval=1, eval_interval=0, checkpoint_interval=0
    )
    launch_training(run)
    steps = [json.loads(line) for line in storage.read_text(storage.join(layout.stats_url(fresh_run), "steps.jsonl")).splitlines()]
    assert {s["epoch"] for s in steps} == {0}
    faults = [s["page_faults_per_step"] for s in steps]
    # the first steps fault the heap in as it grows; the last four reuse it
    assert sum(faults[-4:]) / 4 < 0.25 * logits_pages, faults

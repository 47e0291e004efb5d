"""Every URL on S3: a real S3 API (moto's server on loopback), local Spark, real ranks."""

import dataclasses
import json
import re
import subprocess
import sys
import time

import boto3
import pytest

from horovod_llm import checkpoint, storage
from horovod_llm.data.preprocess import run_preprocess
from horovod_llm.launchers.launch import launch_training
from tests.conftest import TINY_CONFIG, tiny_config
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.spark, pytest.mark.horovod]


def keys(s3, bucket, prefix=""):
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


@pytest.fixture(scope="module")
def s3_run(s3_server, spark, tiny_corpus):
    """The tiny corpus uploaded to S3, preprocessed and trained there (4 steps, 2 ranks)."""
    s3 = boto3.client("s3", endpoint_url=s3_server)
    for bucket in ("corpus", "runs"):
        s3.create_bucket(Bucket=bucket)
    for path in tiny_corpus.iterdir():
        s3.upload_file(str(path), "corpus", f"plays/{path.name}")
    config = tiny_config("s3a://runs/tiny", "s3://corpus/plays/", f"storage.s3.endpoint_url={s3_server}")
    storage.use(storage.storage_settings(config))
    manifest = run_preprocess(config, spark)
    short = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=4, checkpoint_interval=2))
    summary = launch_training(short, spark)["summary"]
    return s3, config, manifest, summary


def test_preprocess_and_train_write_every_output_to_s3(s3_run):
    s3, config, manifest, summary = s3_run
    stored = keys(s3, "runs", "tiny/")
    assert {"tiny/dataset/manifest.json", "tiny/tokenizer/tokenizer.model", "tiny/embeddings/word2vec.npy", "tiny/model.zip"} <= stored
    assert len([k for k in stored if k.startswith("tiny/dataset/train/part-")]) == len(manifest.splits["train"].files)
    for step in (2, 4):
        assert f"tiny/checkpoints/step-{step:08d}/COMPLETE" in stored
    assert {"tiny/stats/steps.jsonl", "tiny/stats/summary.json", "tiny/stats/training.png"} <= stored
    assert any(k.startswith("tiny/stats/tensorboard/events.out.tfevents") for k in stored)
    body = json.loads(s3.get_object(Bucket="runs", Key="tiny/stats/summary.json")["Body"].read())
    assert body["steps"] == 4 and body["ranks"] == 2 and body["model_zip_url"] == "s3://runs/tiny/model.zip"


def test_statistics_and_events_reach_s3_at_each_checkpoint_while_it_trains(s3_run, tmp_path):
    """Issue 29: with an s3:// output_url the JSONL records and the event file are
    uploaded at every checkpoint (an object store cannot be appended to), and TensorBoard
    reads them from a synced copy."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    s3, config, _, _ = s3_run
    for key in keys(s3, "runs", "tiny/dataset/") | keys(s3, "runs", "tiny/tokenizer/") | keys(s3, "runs", "tiny/embeddings/"):
        s3.copy_object(Bucket="runs", Key=key.replace("tiny/", "live/", 1), CopySource={"Bucket": "runs", "Key": key})
    command = [
        sys.executable, "-m", "horovod_llm.cli", "train", "--config", str(TINY_CONFIG), "output_url=s3://runs/live",
        f"storage.s3.endpoint_url={config.storage.s3.endpoint_url}", "train.launcher=local", "train.num_proc=1",
        "train.batch_size=64", "train.max_steps=100000", "train.checkpoint_interval=20", "train.log_interval=5",
    ]  # fmt: skip
    training = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not [k for k in keys(s3, "runs", "live/checkpoints/") if k.endswith("step-00000040/COMPLETE")]:
            assert training.poll() is None and time.monotonic() < deadline, training.communicate()[1][-3000:]
            time.sleep(0.3)
        # The checkpoint's COMPLETE lands before the statistics follow it: wait for them.
        while not any(r["step"] == 40 for r in map(json.loads, s3.get_object(Bucket="runs", Key="live/stats/steps.jsonl")["Body"].read().splitlines())):
            assert training.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        events = [k for k in keys(s3, "runs", "live/stats/tensorboard/")]
        folder = tmp_path / "tensorboard"
        folder.mkdir()
        for key in events:  # what `aws s3 sync` would fetch
            s3.download_file("runs", key, str(folder / key.rsplit("/", 1)[1]))
        assert training.poll() is None  # read while it trains
    finally:
        training.kill()
        training.communicate()
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    steps = [event.step for event in accumulator.Scalars("train/loss")]
    assert steps[:8] == [5, 10, 15, 20, 25, 30, 35, 40], steps


def cli(*args):
    return subprocess.run([sys.executable, "-m", "horovod_llm.cli", *args], capture_output=True, text=True, timeout=600)


def test_generate_and_evaluate_from_s3(s3_run):
    generated = cli("generate", "--checkpoint", "s3://runs/tiny", "--prompt", "KING:", "--max-new-tokens", "10")
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stdout.startswith("KING:") and len(generated.stdout.strip()) > len("KING:")
    evaluated = cli("evaluate", "--checkpoint", "s3a://runs/tiny/model.zip", "--split", "val", "--output-url", "s3://runs/tiny")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    report = json.loads(evaluated.stdout)
    assert report["tokens"] > 0 and report["perplexity"] > 1


def test_resume_from_an_s3_checkpoint(s3_run, spark):
    s3, config, _, _ = s3_run
    longer = dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=6, checkpoint_interval=2))
    summary = launch_training(longer, spark)["summary"]
    assert summary["resumed_from_step"] == 4 and summary["steps"] == 6
    assert "tiny/checkpoints/step-00000006/COMPLETE" in keys(s3, "runs", "tiny/checkpoints/")


def complete_steps_from(s3, prefix: str, first: int) -> list[int]:
    """The steps of the complete checkpoints under `prefix`, from `first` on."""
    steps = [int(m) for key in keys(s3, "runs", prefix) for m in re.findall(r"step-(\d{8})/COMPLETE$", key)]
    return [step for step in steps if step >= first]


def test_storage_going_away_mid_run_fails_clearly_and_keeps_the_last_checkpoint(s3_run, s3_server, tmp_path):
    s3, config, _, _ = s3_run
    for key in keys(s3, "runs", "tiny/dataset/") | keys(s3, "runs", "tiny/tokenizer/") | keys(s3, "runs", "tiny/embeddings/"):
        s3.copy_object(Bucket="runs", Key=key.replace("tiny/", "away/", 1), CopySource={"Bucket": "runs", "Key": key})
    host, port = s3_server.removeprefix("http://").split(":")
    proxy = TcpProxy(host, int(port))
    command = [
        sys.executable, "-m", "horovod_llm.cli", "train", "--config", str(TINY_CONFIG), "output_url=s3://runs/away",
        f"storage.s3.endpoint_url={proxy.url}", "storage.s3.max_attempts=2", "train.launcher=horovodrun",
        "train.max_steps=100000", "train.checkpoint_interval=2", "train.log_interval=1",
    ]  # fmt: skip
    training = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    # a complete checkpoint at step 4 or later: with one every 2 steps and keep_last 2,
    # step 4's lives until step 8's prunes it, under half a second on an Intel Xeon with
    # AMX; waiting for that one key, a poll missed it and the run went on checkpointing
    # until this process (the S3 server's) ran out of open files
    while not complete_steps_from(s3, "away/checkpoints/", 4):
        assert training.poll() is None and time.monotonic() < deadline, training.communicate()[1][-3000:]
        time.sleep(0.1)
    proxy.cut()
    _, stderr = training.communicate(timeout=240)
    assert training.returncode != 0
    assert f"storage at {proxy.url} failed" in stderr, stderr[-3000:]
    # whichever rank met the cut first is named, for its own error: not a rank that only
    # lost it, nor the SIGTERM the launcher sent while it was still exiting
    last = stderr.strip().splitlines()[-1]
    assert re.match(r"error: training rank \d stopped on an error \(its 'error:' line above says which\)", last), stderr[-3000:]
    # what is marked complete is whole: the latest complete checkpoint loads
    storage.use(storage.storage_settings(config))
    latest = checkpoint.complete_checkpoints("s3://runs/away")[-1]
    assert latest[0] >= 4
    assert checkpoint.load_checkpoint(latest[1]).step == latest[0]

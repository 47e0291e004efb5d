"""A worker host lost mid-training on the namespace cluster: every process on it killed
at once and its link taken down, as when a node fails or is reclaimed."""

from __future__ import annotations

import json
import time

import pytest

from tests.cluster.conftest import start_cluster
from tests.cluster.jobs import EXECUTORS, cli, command, copy_prefix, read_s3, upload_corpus, wait_for_s3

pytestmark = [pytest.mark.spark, pytest.mark.horovod, pytest.mark.cluster]

# Elastic mode brings a rank back by Spark re-running its task, so tasks may be retried.
RETRIES = {"spark.task.maxFailures": "4"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Workers of 1 core each, and the tiny corpus preprocessed once to s3://runs/base."""
    started = start_cluster(tmp_path_factory.mktemp("cluster"), {"node2": 1, "node3": 1})
    try:
        upload_corpus(started)
        done = cli(started, "preprocess", output_url="s3://runs/base")
        assert done.returncode == 0, done.stderr[-3000:]
        yield started
    finally:
        started.net.down()


def fresh_output(cluster, name: str) -> str:
    """s3://runs/NAME holding the base run's dataset, tokenizer and embeddings."""
    for part in ("dataset", "tokenizer", "embeddings"):
        copy_prefix(cluster, f"runs/base/{part}/", f"runs/{name}/{part}/")
    return f"s3://runs/{name}"


def start_training(cluster, name: str, *settings: str):
    log = cluster.work / f"{name}.log"
    argv = command(cluster, "train", *settings, output_url=fresh_output(cluster, name), spark_conf={**EXECUTORS, **RETRIES})
    return cluster.net.start(cluster.driver_host, argv, cluster.env, log), log


def lose_rank_host(cluster, rank: int, output_url: str):
    """Once a checkpoint is complete, lose the host where `rank` runs; return that host.
    (The ranks' log lines reach the driver's log in chunks, late: S3 tells sooner.)"""
    wait_for_s3(cluster, f"{output_url}/checkpoints/", "/COMPLETE", 300)
    host = cluster.rank_host(rank)
    assert host is not None, f"rank {rank} not found on any worker host"
    cluster.net.lose(host)
    return host


def test_elastic_training_goes_on_without_a_lost_host(cluster):
    process, log = start_training(
        cluster, "elastic", "train.elastic=true", "train.min_proc=1", "train.max_steps=200", "train.batch_size=32",
        "train.log_interval=1", "train.checkpoint_interval=50", "train.elastic_commit_interval=5", "train.keep_last=10",
    )  # fmt: skip
    lost = lose_rank_host(cluster, 1, "s3://runs/elastic")
    started = time.monotonic()
    process.wait(timeout=900)
    output = log.read_text(errors="replace")
    assert process.returncode == 0, output[-5000:]
    summary = json.loads(read_s3(cluster, "s3://runs/elastic/stats/summary.json"))
    assert summary["steps"] == 200 and summary["resumed_from_step"] == 0  # carried on, no restart
    ranks = [json.loads(line)["ranks"] for line in read_s3(cluster, "s3://runs/elastic/stats/steps.jsonl").splitlines()]
    assert ranks[0] == 2 and ranks[-1] == 1, ranks  # the statistics show the size change
    assert [p["host"] for p in summary["placement"]] == [h.name for h in cluster.workers if h != lost]
    print(f"lost {lost.name}; finished {time.monotonic() - started:.0f} s later")
    cluster.net.revive(lost)
    cluster.start_worker(lost)


def test_a_lost_host_fails_the_job_naming_it_and_a_restart_resumes(cluster):
    process, log = start_training(
        cluster, "restart", "train.max_restarts=1", "train.start_timeout=180", "train.max_steps=200", "train.batch_size=32",
        "train.log_interval=1", "train.checkpoint_interval=50", "train.keep_last=10",
    )  # fmt: skip
    lost = lose_rank_host(cluster, 1, "s3://runs/restart")
    lost_at = time.monotonic()
    # Horovod alone would wait forever for the lost rank's exit status.
    cluster.net.wait_for(log, "restart 1 of 1", 300, process)
    failed_after = time.monotonic() - lost_at
    failure = next(line for line in log.read_text(errors="replace").splitlines() if "restart 1 of 1" in line)
    assert f"training rank 1 on host {lost.name} stopped answering (the host is lost or unreachable); rank 0 stopped because of it" in failure
    # The host comes back (a replacement node): the restart gets its slots and resumes.
    cluster.net.revive(lost)
    cluster.start_worker(lost)
    process.wait(timeout=600)
    assert process.returncode == 0, log.read_text(errors="replace")[-5000:]
    summary = json.loads(read_s3(cluster, "s3://runs/restart/stats/summary.json"))
    assert summary["steps"] == 200 and summary["resumed_from_step"] >= 50
    assert {p["host"] for p in summary["placement"]} == {"node2", "node3"}
    print(f"lost {lost.name}; the job failed {failed_after:.0f} s later and resumed from step {summary['resumed_from_step']}")

"""What the host-loss tests share (test_host_loss_elastic.py, test_host_loss_restart.py,
test_host_loss_torch.py: modules apart, so that their clusters run side by side on
workers of the suite).

A worker host is lost mid-training on the namespace cluster, at Spark's default timeouts
and the product's default settings: the link of the host that ran a rank goes down and
every process on it is killed (netns.Cluster.lose: no connection is closed, as when a
node loses power), at one of several moments. The victim is the host the product
records for that rank (stats/placement.json). docs/reliability.md states the bounds
these tests assert (HOST_LOSS_*)."""

from __future__ import annotations

import json
import re
import time
from contextlib import contextmanager

from tests.cluster.conftest import start_cluster
from tests.cluster.jobs import command, copy_prefix, read_s3, upload_corpus, upload_prepared, wait_for_s3

# docs/reliability.md: after a host is lost, an elastic job trains again at the smaller
# size within this many seconds (Gloo's 30 s timeout, then Horovod's rendezvous), and a
# job in default mode fails within this many, naming the rank and host.
HOST_LOSS_RESET_WITHIN_S = 60
HOST_LOSS_FAILS_WITHIN_S = 60
# Under train.launcher=torch_distributor the survivor waits for its peer as long as
# torch.distributed's timeout, max(train.start_timeout, 60) s (tiny.yaml: 60).
HOST_LOSS_TORCH_FAILS_WITHIN_S = 90
# Elastic mode brings a rank back by Spark re-running its task, so tasks may be retried:
# what a user of elastic mode sets (docs/reliability.md), Spark's own default on a cluster.
RETRIES = {"spark.task.maxFailures": "4"}
# The run trains for a wall-clock budget, not a number of steps: the test polls S3
# through subprocesses (seconds apiece under load) and must strike while it trains. At
# ~20 steps/s (AMD EPYC, under load) 600 steps took 30 s; an Intel Xeon with AMX ran
# ~100 steps/s and trained all 600 before the loss, so the restart had nothing to resume.
# A checkpoint every CHECKPOINTS steps: 2 to 10 s apart.
BUDGET_MINUTES, CHECKPOINTS = 0.5, 200


@contextmanager
def preprocessed_cluster(work, tiny_dataset, workers: int = 2):
    """`workers` workers of 1 core each (one rank per host), and the session's tiny dataset
    (the tiny corpus preprocessed on this machine, tests/conftest.py) in s3://runs/base.
    Preprocessing on the cluster itself is test_multi_host.py's: here it would only add
    minutes of CPU to a suite that is CPU-bound."""
    config, _ = tiny_dataset
    started = start_cluster(work, {f"node{i}": 1 for i in range(2, 2 + workers)})
    try:
        upload_corpus(started)
        upload_prepared(started, config.output_url, "runs/base")
        yield started
    finally:
        started.net.down()


def fresh_output(cluster, name: str) -> str:
    """s3://runs/NAME holding the base run's dataset, tokenizer and embeddings."""
    for part in ("dataset", "tokenizer", "embeddings"):
        copy_prefix(cluster, f"runs/base/{part}/", f"runs/{name}/{part}/")
    return f"s3://runs/{name}"


def start_training(cluster, name: str, *settings: str):
    """`horovod-llm train` on tiny.yaml, default settings but the budget and checkpoints."""
    log = cluster.work / f"{name}.log"
    settings = ("train.max_steps=0", f"train.max_minutes={BUDGET_MINUTES}", f"train.checkpoint_interval={CHECKPOINTS}", *settings)
    argv = command(cluster, "train", *settings, output_url=fresh_output(cluster, name), spark_conf=RETRIES)
    return cluster.net.start(cluster.driver_host, argv, cluster.env, log), log


def placement(cluster, output_url: str) -> dict:
    return json.loads(read_s3(cluster, f"{output_url}/stats/placement.json"))


def lose_rank_host(cluster, output_url: str, rank: int, moment: str):
    """Lose the host the product records for `rank`, at `moment`: right after the first
    complete checkpoint, mid-interval (3 s later, about 100 steps before the next), or
    during an elastic commit (as rank 0 writes the commit's statistics). Return the
    host and the monotonic time of the loss."""
    # Placement first (written as training starts), so that nothing slow stands between
    # the checkpoint and the loss.
    wait_for_s3(cluster, f"{output_url}/stats/", "/placement.json", 300)
    name = next(r["host"] for r in placement(cluster, output_url)["ranks"] if r["rank"] == rank)
    host = next(h for h in cluster.workers if h.name == name)
    before = removed_workers(cluster, host)
    wait_for_s3(cluster, f"{output_url}/checkpoints/step-{CHECKPOINTS:08d}/", "/COMPLETE", 300)
    if moment == "mid-interval":
        time.sleep(3)
    elif moment == "during-commit":
        s3_log = cluster.work / "s3.log"
        seen = s3_log.read_text(errors="replace").count("/stats/steps.jsonl")
        cluster.net.wait_for_count(s3_log, "/stats/steps.jsonl", seen + 1, 60)
    cluster.net.lose(host)
    return host, time.monotonic(), before


def trained_its_budget(summary: dict) -> bool:
    """The run (its restart, or its elastic reset, included) trained the whole budget."""
    return summary["stopped_by"] == "budget" and summary["trained_seconds"] >= summary["budget_seconds"] == 60 * BUDGET_MINUTES


def removed_workers(cluster, host) -> int:
    """How many of `host`'s workers the master has dropped so far."""
    return len(re.findall(rf"Removing worker worker-\S+-{host.name}-\d+ on", (cluster.work / "master.log").read_text(errors="replace")))


def revive(cluster, host, removed_before: int) -> None:
    """A replacement node: once the master has dropped the lost worker (Spark's 60 s
    heartbeat timeout, checked every minute), the host's link up again and a new Spark
    worker on it."""
    deadline = time.monotonic() + 200
    while removed_workers(cluster, host) <= removed_before:
        assert time.monotonic() < deadline, f"the master never dropped the lost worker on {host.name}"
        time.sleep(1)
    cluster.net.revive(host)
    cluster.start_worker(host)


def fails_naming_the_host_and_resumes(cluster, launcher: str, rank: int, moment: str) -> None:
    """Default mode (train.max_restarts=1): the job fails naming the rank and its host
    within the bound for its launcher; once the host is back (a replacement node), the
    restart gets its slots and resumes from the latest complete checkpoint."""
    name = f"restart-{launcher}-{rank}"
    out = f"s3://runs/{name}"
    process, log = start_training(cluster, name, f"train.launcher={launcher}", "train.max_restarts=1")
    lost, lost_at, removed = lose_rank_host(cluster, out, rank, moment)
    within = HOST_LOSS_TORCH_FAILS_WITHIN_S if launcher == "torch_distributor" else HOST_LOSS_FAILS_WITHIN_S
    cluster.net.wait_for(log, "restart 1 of 1", within + 60, process)
    failed_after = time.monotonic() - lost_at
    failure = next(line for line in log.read_text(errors="replace").splitlines() if "restart 1 of 1" in line)
    assert re.search(rf"training rank {rank} on host {lost.name} stopped answering \(the host is lost or unreachable\)", failure), failure
    revive(cluster, lost, removed)
    process.wait(timeout=600)
    assert process.returncode == 0, log.read_text(errors="replace")[-5000:]
    summary = json.loads(read_s3(cluster, f"{out}/stats/summary.json"))
    assert trained_its_budget(summary) and summary["resumed_from_step"] >= CHECKPOINTS, summary
    assert {p["host"] for p in summary["placement"]} == {"node2", "node3"}
    print(
        f"{launcher}, rank {rank}'s host {lost.name} lost {moment}: the job failed {failed_after:.0f} s later, resumed from step {summary['resumed_from_step']}"
    )
    assert failed_after < within, f"the job failed {failed_after:.0f} s after the loss"

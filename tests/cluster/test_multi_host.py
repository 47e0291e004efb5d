"""The code path a cluster takes, on three simulated hosts (conftest.py, netns.py): a
Spark standalone master and S3 on node1 with the driver, one worker on node2 and one on
node3, every byte between them crossing their `eth0` interfaces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.cluster.conftest import start_cluster
from tests.cluster.jobs import EXECUTORS, RUN_URL, cli, copy_prefix, read_s3, upload_corpus

pytestmark = [pytest.mark.spark, pytest.mark.horovod, pytest.mark.cluster]


def task_hosts_by_call_site(event_log: Path) -> dict[str, set[str]]:
    """From Spark's event log: the hosts that ran tasks of the jobs started at each
    call site (file:line in the driver's code)."""
    stage_site, hosts = {}, {}
    for line in next(event_log.iterdir()).read_text().splitlines():
        event = json.loads(line)
        if event["Event"] == "SparkListenerJobStart":
            site = event.get("Properties", {}).get("callSite.short", "")
            stage_site.update({stage: site for stage in event["Stage IDs"]})
        elif event["Event"] == "SparkListenerTaskEnd":
            site = stage_site.get(event["Stage ID"], "")
            hosts.setdefault(site, set()).add(event["Task Info"]["Host"])
    return hosts


# Fake GPUs of the workers: an address apiece, told apart by the host they are on.
WORKER_GPUS = {"node2": ["2"], "node3": ["5"]}
# Executors of one GPU, a GPU per task: Spark schedules the fake GPUs as real ones.
GPU_EXECUTORS = {**EXECUTORS, "spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Workers of 1 core and 1 (fake) GPU each: 2 task slots, one per host."""
    started = start_cluster(tmp_path_factory.mktemp("cluster"), {"node2": 1, "node3": 1}, worker_gpus=WORKER_GPUS)
    try:
        upload_corpus(started)
        yield started
    finally:
        started.net.down()


@pytest.fixture(scope="module")
def pipeline(cluster):
    """`horovod-llm run` from S3 to S3 across the hosts, on executors with a GPU each
    (the ranks train on the CPU: the GPUs are fake, and train.device=auto finds none)."""
    event_log = cluster.work / "events"
    # train.nics pins the interface Horovod would pick anyway (tests/cluster/host_loss.py
    # leaves the choice to Horovod).
    done = cli(cluster, "run", "train.nics=[eth0]", event_log=event_log, spark_conf=GPU_EXECUTORS)
    assert done.returncode == 0, done.stderr[-4000:]
    return done, json.loads(read_s3(cluster, f"{RUN_URL}/stats/summary.json")), event_log


def test_preprocessing_runs_on_both_worker_hosts(pipeline):
    _, _, event_log = pipeline
    hosts = task_hosts_by_call_site(event_log)
    preprocessing = set().union(*(h for site, h in hosts.items() if "preprocess.py" in site or "windows.py" in site or "corpus.py" in site))
    assert preprocessing == {"node2", "node3"}, hosts


def test_the_ranks_train_on_two_hosts_over_the_cluster_interface(pipeline):
    _, summary, _ = pipeline
    placement = summary["placement"]
    assert [p["rank"] for p in placement] == [0, 1]
    assert {p["host"] for p in placement} == {"node2", "node3"}
    # Gloo bound eth0: the only interface that joins the hosts' namespaces (loopback
    # in one namespace cannot reach another), so the allreduces crossed it.
    assert {p["gloo_iface"] for p in placement} == {"eth0"}
    assert summary["steps"] == 8 and summary["ranks"] == 2
    assert summary["collectives"]["gradient_reduction"] == summary["backend"]  # two hosts: no shared memory
    assert summary["launch"]["spark_master"].startswith("spark://node1:")
    assert summary["launch"]["executors"] == 2


def test_each_rank_gets_the_gpu_spark_scheduled_for_its_task(pipeline):
    done, summary, _ = pipeline
    # Slots counted by GPUs as well as cores, before preprocessing.
    (slots,) = {line.split("task slots: ", 1)[1] for line in done.stderr.splitlines() if "cluster: task slots: " in line}
    assert slots.startswith("2 (") and all(f" on {host}: 1 cores, 1 GPUs, 1 slots" in slots for host in WORKER_GPUS), slots
    seen = {p["host"]: p["spark_gpus"] for p in summary["placement"]}
    assert seen == WORKER_GPUS  # each rank its own task's GPU (TaskContext.resources, via Horovod's task service)
    assert {p["device"] for p in summary["placement"]} == {"cpu"} and summary["device"] == "cpu"


def test_the_pipeline_generates_from_the_s3_checkpoint(pipeline, cluster):
    done, _, _ = pipeline
    assert "--- sample from s3://runs/tiny" in done.stdout
    generated = cli(cluster, "generate", "--checkpoint", RUN_URL, "--prompt", "KING:", "--max-new-tokens", "12", timeout=300)
    assert generated.returncode == 0, generated.stderr[-2000:]
    assert generated.stdout.startswith("KING:") and len(generated.stdout.strip()) > len("KING:")


def test_torch_distributor_trains_on_two_hosts_over_the_cluster_interface(pipeline, cluster):
    """train.launcher=torch_distributor on the same cluster and dataset: one torchrun per
    Spark task, a rank on each worker host, Gloo over eth0 (train.nics)."""
    for part in ("dataset", "tokenizer", "embeddings"):
        copy_prefix(cluster, f"runs/tiny/{part}/", f"runs/torch/{part}/")
    # On the GPU executors: TorchDistributor(use_gpu=True) hands each rank its task's GPU.
    done = cli(cluster, "train", "train.launcher=torch_distributor", "train.nics=[eth0]", output_url="s3://runs/torch", timeout=600, spark_conf=GPU_EXECUTORS)
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(read_s3(cluster, "s3://runs/torch/stats/summary.json"))
    assert {p["host"]: p["spark_gpus"] for p in summary["placement"]} == WORKER_GPUS
    assert summary["backend"] == "torch" and summary["launch"]["launcher"] == "torch_distributor"
    assert summary["collectives"]["gradient_reduction"] == "torch"  # two hosts: no shared memory
    assert {p["host"] for p in summary["placement"]} == {"node2", "node3"}
    assert {p["gloo_iface"] for p in summary["placement"]} == {"eth0"}
    assert summary["steps"] == 8 and summary["ranks"] == 2


def test_an_interface_missing_on_a_host_is_refused(pipeline, cluster):
    missing = cli(cluster, "train", "train.nics=[eth9]", "train.max_steps=12", timeout=300)
    assert missing.returncode != 0
    error = missing.stderr.strip().splitlines()[-1]
    assert error.startswith("error: train.nics=['eth9'], but host node2 has no interface eth9 (it has eth0, lo)"), error


@pytest.fixture(scope="module")
def misconfigured_cluster(tmp_path_factory):
    """Workers of 3 and 1 cores whose hosts files map their own names to 127.0.1.1, as
    Debian's installer writes them; node2 has one (fake) GPU."""
    started = start_cluster(tmp_path_factory.mktemp("misconfigured"), {"node2": 3, "node3": 1}, own_name_on_loopback=True, worker_gpus={"node2": ["0"]})
    try:
        upload_corpus(started)
        yield started
    finally:
        started.net.down()


def test_task_slots_are_counted_per_executor(misconfigured_cluster):
    # 4 cores in all make 2 slots of 2 cores by the total, but executors of 3 and 1
    # cores hold only one whole slot.
    # Each executor takes its whole worker.
    whole_workers = {"spark.task.cpus": "2", "spark.scheduler.minRegisteredResourcesRatio": "1.0"}
    # Refused after train.start_timeout: enough for both executors to register on a busy
    # machine (with 10 s one of them sometimes had not, under a parallel suite).
    refused = cli(misconfigured_cluster, "run", "train.start_timeout=40", spark_conf=whole_workers, timeout=300)
    assert refused.returncode != 0
    error = refused.stderr.strip().splitlines()[-1]
    assert error.startswith("error: train.num_proc=2 ranks need 2 task slots of spark.task.cpus=2 cores at once, but the executors give 1 ("), error
    assert ": 3 cores, 1 slots" in error and ": 1 cores, 0 slots" in error
    assert "preprocess" not in refused.stderr  # refused before any preprocessing


def test_fewer_gpus_than_ranks_are_refused_before_preprocessing(misconfigured_cluster):
    # 3 + 1 cores make 4 slots of 1 core, but only node2 has a GPU (node3 gets no
    # executor that asks for one), and its executor's one GPU makes one slot.
    gpus = {"spark.task.cpus": "1", "spark.executor.resource.gpu.amount": "1", "spark.task.resource.gpu.amount": "1"}
    refused = cli(misconfigured_cluster, "run", "train.start_timeout=20", spark_conf=gpus, timeout=300)
    assert refused.returncode != 0
    error = refused.stderr.strip().splitlines()[-1]
    assert error == (
        "error: train.num_proc=2 ranks need 2 task slots of spark.task.cpus=1 cores and spark.task.resource.gpu.amount=1 GPUs at once, "
        "but the executors give 1 (executor 0 on node2: 3 cores, 1 GPUs, 1 slots): lower train.num_proc, or give the executors more GPUs "
        "(spark.executor.resource.gpu.amount)"
    ), error
    assert "horovod_llm.data.preprocess" not in refused.stderr


def test_host_names_on_loopback_are_refused_before_preprocessing(misconfigured_cluster):
    refused = cli(misconfigured_cluster, "run", timeout=300)
    assert refused.returncode != 0
    error = refused.stderr.strip().splitlines()[-1]
    assert error == (
        "error: ranks would span 2 hosts, but node2 resolves its own name to 127.0.1.1; node3 resolves its own name to 127.0.1.1, "
        "an address other hosts cannot reach (Gloo would time out connecting): map each host's name to its cluster address in /etc/hosts (or DNS) on every host"
    ), error
    assert "horovod_llm.data.preprocess" not in refused.stderr

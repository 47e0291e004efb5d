"""Jobs on the namespace cluster (conftest.py): S3 reached from node1, and the CLI run
by the driver on node1 with the tiny config."""

from __future__ import annotations

import sys
from pathlib import Path

from horovod_llm.data.corpus import embedded_corpus
from tests.cluster.conftest import SparkCluster
from tests.conftest import TINY_PLAYS

RUN_URL = "s3://runs/tiny"


def upload_corpus(cluster: SparkCluster) -> None:
    """The tiny corpus into the cluster's S3 (reachable from node1 only, like the rest)."""
    files = [f.url for f in embedded_corpus() if Path(f.url).name in TINY_PLAYS]
    script = (
        "import boto3, sys\n"
        "s3 = boto3.client('s3')\n"
        "for bucket in ('corpus', 'runs'): s3.create_bucket(Bucket=bucket)\n"
        "for path in sys.argv[1:]: s3.upload_file(path, 'corpus', 'plays/' + path.rsplit('/', 1)[-1])\n"
    )
    done = cluster.driver([sys.executable, "-c", script, *files], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def upload_prepared(cluster: SparkCluster, output_url: str, target: str) -> None:
    """The dataset, tokenizer and embeddings of a local output_url (preprocessed on this
    machine) into s3://TARGET/, as a run that preprocessed on the cluster would leave them."""
    script = (
        "import boto3, pathlib, sys\n"
        "s3, root, (bucket, prefix) = boto3.client('s3'), pathlib.Path(sys.argv[1]), sys.argv[2].split('/', 1)\n"
        "for part in ('dataset', 'tokenizer', 'embeddings'):\n"
        "    for path in sorted((root / part).rglob('*')):\n"
        "        if path.is_file(): s3.upload_file(str(path), bucket, prefix + '/' + path.relative_to(root).as_posix())\n"
    )
    done = cluster.driver([sys.executable, "-c", script, str(output_url), target], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def read_s3(cluster: SparkCluster, url: str) -> str:
    bucket, key = url.removeprefix("s3://").split("/", 1)
    script = "import boto3, sys; sys.stdout.write(boto3.client('s3').get_object(Bucket=sys.argv[1], Key=sys.argv[2])['Body'].read().decode())"
    done = cluster.driver([sys.executable, "-c", script, bucket, key], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


# Executors of one core, at most two: one per worker host.
EXECUTORS = {"spark.executor.cores": "1", "spark.cores.max": "2", "spark.executor.memory": "1g", "spark.scheduler.minRegisteredResourcesRatio": "1.0"}


def command(cluster: SparkCluster, *args: str, output_url: str = RUN_URL, event_log: Path | None = None, spark_conf: dict | None = None) -> list[str]:
    """`horovod-llm ARGS` as the driver on node1 runs it against the cluster, with the
    tiny config, S3 everywhere and Spark settings `spark_conf` (default: EXECUTORS)."""
    conf = dict(EXECUTORS if spark_conf is None else spark_conf)
    if event_log is not None:
        event_log.mkdir(exist_ok=True)
        conf.update({"spark.eventLog.enabled": "true", "spark.eventLog.dir": f"file://{event_log}"})
    settings = [
        f"spark.master={cluster.master_url}",
        f"output_url={output_url}",
        "data.input_url=s3://corpus/plays/",
        f"storage.s3.endpoint_url={cluster.s3_endpoint}",
        *(f"spark.conf.{key}={value}" for key, value in conf.items()),
    ]
    argv = [sys.executable, "-m", "horovod_llm", args[0]]
    if args[0] in ("run", "preprocess", "train"):
        argv += ["--config", "configs/tiny.yaml", *settings]
    return argv + list(args[1:])


def cli(cluster: SparkCluster, *args: str, timeout: float = 900, **options):
    """Run `command(...)` on node1 and wait for it."""
    return cluster.driver(command(cluster, *args, **options), timeout=timeout)


def copy_prefix(cluster: SparkCluster, source: str, target: str) -> None:
    """Copy every object under s3://SOURCE to s3://TARGET (both 'bucket/prefix/')."""
    script = (
        "import boto3, sys\n"
        "s3 = boto3.client('s3')\n"
        "(sb, sp), (tb, tp) = (a.split('/', 1) for a in sys.argv[1:3])\n"
        "for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sb, Prefix=sp):\n"
        "    for item in page.get('Contents', []):\n"
        "        s3.copy_object(Bucket=tb, Key=tp + item['Key'][len(sp):], CopySource={'Bucket': sb, 'Key': item['Key']})\n"
    )
    done = cluster.driver([sys.executable, "-c", script, source, target], timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def wait_for_s3(cluster: SparkCluster, url: str, suffix: str, timeout: float) -> None:
    """Wait until an object under `url` whose key ends with `suffix` exists."""
    bucket, prefix = url.removeprefix("s3://").split("/", 1)
    script = (
        "import boto3, sys, time\n"
        "s3, deadline = boto3.client('s3'), time.monotonic() + float(sys.argv[4])\n"
        "while time.monotonic() < deadline:\n"
        "    found = s3.list_objects_v2(Bucket=sys.argv[1], Prefix=sys.argv[2]).get('Contents', [])\n"
        "    if any(item['Key'].endswith(sys.argv[3]) for item in found): sys.exit(0)\n"
        "    time.sleep(0.5)\n"
        "sys.exit(1)\n"
    )
    done = cluster.driver([sys.executable, "-c", script, bucket, prefix, suffix, str(timeout)], timeout=timeout + 60)
    assert done.returncode == 0, f"no object ending in {suffix} under {url} within {timeout:.0f} s"

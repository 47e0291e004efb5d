"""A three-host cluster for the tests in this folder: network namespaces (netns.py), a
Spark standalone master and an S3 server (moto) on node1, a Spark worker on node2 and on
node3. Started once per module that asks for it, always torn down; skipped, with the
reason, where namespaces cannot be made, except where the environment variable CI is
set: there it fails."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.cluster.netns import Cluster, Host, remove_stale, unavailable
from tests.conftest import short_lived_jvm_conf_dir

S3_PORT = 5000
MASTER_PORT = 7077

# Variables of this test process that must not reach the cluster's processes: the
# suite's loopback settings and its own S3 server.
_LOCAL_ONLY = ("SPARK_LOCAL_IP", "AWS_ENDPOINT_URL", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_HOME")


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


@dataclass
class SparkCluster:
    net: Cluster
    work: Path
    env: dict[str, str]
    worker_cores: dict[str, int]
    # Fake GPU addresses a worker declares (none: no GPUs). Spark schedules them as it
    # would real ones: its worker runs a discovery script that prints them.
    worker_gpus: dict[str, list[str]] = field(default_factory=dict)

    @property
    def driver_host(self) -> Host:
        return self.net.hosts[0]

    @property
    def workers(self) -> list[Host]:
        return self.net.hosts[1:]

    @property
    def master_url(self) -> str:
        return f"spark://{self.driver_host.name}:{MASTER_PORT}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.driver_host.name}:{S3_PORT}"

    def spark_class(self, *args: str) -> list[str]:
        return [str(spark_home() / "bin" / "spark-class"), *args]

    def start_master(self) -> None:
        log = self.work / "master.log"
        process = self.net.start(
            self.driver_host,
            self.spark_class("org.apache.spark.deploy.master.Master", "--host", self.driver_host.name, "--port", str(MASTER_PORT), "--webui-port", "8080"),
            self.env,
            log,
        )
        self.net.wait_for(log, "I have been elected leader", 120, process)

    def start_worker(self, host: Host) -> None:
        log = self.work / f"worker-{host.name}.log"
        worker_dir = self.work / f"worker-{host.name}"
        worker_dir.mkdir(exist_ok=True)
        env = dict(self.env)
        gpus = self.worker_gpus.get(host.name)
        if gpus:
            script = self.work / f"gpus-{host.name}.sh"
            script.write_text(f"#!/bin/sh\necho '{json.dumps({'name': 'gpu', 'addresses': gpus})}'\n")
            script.chmod(0o755)
            env["SPARK_WORKER_OPTS"] = f"-Dspark.worker.resource.gpu.amount={len(gpus)} -Dspark.worker.resource.gpu.discoveryScript={script}"
        argv = self.spark_class(
            "org.apache.spark.deploy.worker.Worker", "--host", host.name, "--cores", str(self.worker_cores[host.name]),
            "--memory", "6g", "--work-dir", str(worker_dir), "--webui-port", "8081", self.master_url,
        )  # fmt: skip
        process = self.net.start(host, argv, env, log)
        self.net.wait_for(log, "Successfully registered with master", 120, process)

    def rank_host(self, rank: int) -> Host | None:
        """The worker host where Horovod rank `rank` runs now."""
        import psutil

        for host in self.workers:
            for pid in self.net.pids(host):
                try:
                    process = psutil.Process(pid)
                    if "horovod.spark.task.gloo_exec_fn" in " ".join(process.cmdline()) and process.environ().get("HOROVOD_RANK") == str(rank):
                        return host
                except psutil.NoSuchProcess:
                    continue
        return None

    def start_s3(self) -> None:
        log = self.work / "s3.log"
        argv = [sys.executable, "-m", "moto.server", "-H", self.driver_host.address, "-p", str(S3_PORT)]
        process = self.net.start(self.driver_host, argv, self.env, log)
        self.net.wait_for(log, "Running on", 60, process)

    def driver(self, argv: list[str], timeout: float, **extra_env: str):
        """Run a command on node1 (where the driver runs) and wait for it."""
        return self.net.run(self.driver_host, argv, {**self.env, **extra_env}, timeout)


def cluster_env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LOCAL_ONLY}
    env.update(
        SPARK_HOME=str(spark_home()),
        SPARK_LOG_DIR=str(work / "spark-logs"),
        SPARK_LOCAL_DIRS=str(work / "spark-local"),
        PYSPARK_PYTHON=sys.executable,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=f"http://node1:{S3_PORT}",
        PYTHONPATH=str(Path(__file__).resolve().parents[2]),
        SPARK_CONF_DIR=short_lived_jvm_conf_dir(),
    )
    # Spark's own timeouts (spark.worker.timeout: 60 s): the cluster a user starts.
    return env


def start_cluster(
    work: Path, worker_cores: dict[str, int], own_name_on_loopback: bool = False, worker_gpus: dict[str, list[str]] | None = None
) -> SparkCluster:
    reason = unavailable()
    if reason:
        message = f"multi-host tests need network namespaces: {reason}"
        if os.environ.get("CI"):  # CI runs as root with iproute2: a missing part there is a broken CI, not a skip
            pytest.fail(message + " (CI is set, so this fails instead of skipping)", pytrace=False)
        pytest.skip(message)
    remove_stale()
    net = Cluster(1 + len(worker_cores)).up()  # node1 (driver, master, S3) and the workers
    cluster = SparkCluster(net, work, cluster_env(work), worker_cores, worker_gpus or {})
    try:
        for host in cluster.workers:
            net.write_hosts_file(host, own_name_on_loopback=own_name_on_loopback)
        cluster.start_s3()
        cluster.start_master()
        for host in cluster.workers:
            cluster.start_worker(host)
    except BaseException:
        net.down()
        raise
    return cluster


@pytest.fixture(scope="module")
def spark_cluster(tmp_path_factory):
    """Workers of 1 core each: 2 task slots, one per host."""
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"), {"node2": 1, "node3": 1})
    yield cluster
    cluster.net.down()

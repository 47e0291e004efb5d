"""MLflow tracking against a real MLflow server (SQLite backend, artifacts served by the
server), started here on loopback: a run's params, metrics, tags and artifacts read back
with MlflowClient; a killed run resumed into the same MLflow run; a server that goes away
mid-run costs one warning, never the training; no secret reaches MLflow (issue 29)."""

import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from horovod_llm import checkpoint
from horovod_llm.data.manifest import read_manifest
from tests.conftest import TINY_CONFIG

pytestmark = pytest.mark.horovod

SECRET = "TOPSECRET-7f3a"
EXPERIMENT = "issue-29"


def train(out, url, *overrides, wait=True):
    command = [
        sys.executable, "-m", "horovod_llm.cli", "train", "--config", str(TINY_CONFIG), f"output_url={out}", "train.launcher=local", "train.num_proc=1",
        "train.batch_size=64", "train.log_interval=5", "train.checkpoint_interval=20", "train.eval_interval=20",
        f"tracking.mlflow_uri={url}", f"tracking.experiment={EXPERIMENT}",
        # secrets the config holds: never params or tags
        f"spark.conf.spark.hadoop.fs.s3a.secret.key={SECRET}", f"emr.tags.api-token={SECRET}",
        *overrides,
    ]  # fmt: skip
    if wait:
        return subprocess.run(command, capture_output=True, text=True, timeout=600)
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def only_run(client):
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def wait_for_metric_step(client, training, step, deadline, experiment_name=EXPERIMENT):
    """Until the run's train/loss history reaches `step`, while training still runs."""
    while True:
        assert training.poll() is None and time.monotonic() < deadline, training.communicate()[1][-3000:]
        experiment = client.get_experiment_by_name(experiment_name)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        if runs and any(m.step >= step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")):
            return runs[0]
        time.sleep(0.3)


def test_a_run_is_tracked_live_and_a_resume_logs_into_the_same_run(mlflow_server, fresh_run):
    from mlflow.tracking import MlflowClient

    url, _ = mlflow_server
    client = MlflowClient(tracking_uri=url)
    training = train(fresh_run, url, "train.max_steps=100000", wait=False)
    try:
        run = wait_for_metric_step(client, training, 45, time.monotonic() + 240)  # live: read while it trains
        assert checkpoint.complete_checkpoints(fresh_run)[-1][0] >= 40
        os.kill(training.pid, signal.SIGKILL)
    finally:
        training.kill()
        training.communicate()
    latest = checkpoint.complete_checkpoints(fresh_run)[-1][0]
    end = latest + 20
    resumed = train(fresh_run, url, f"train.max_steps={end}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from step {latest + 1}" in resumed.stderr
    assert f"MLflow run: {url}/#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}" in resumed.stderr

    run = only_run(client)  # the resume logged into the killed run's MLflow run
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["train.batch_size"] == "64" and params["model.n_embd"] == "32" and params["tracking.experiment"] == EXPERIMENT
    assert params["train.max_steps"] == "100000"  # params are immutable: the change is a tag
    assert f"horovod_llm.params_changed_at_step_{latest}" in run.data.tags
    tags = run.data.tags
    assert tags["horovod_llm.launcher"] == "local" and tags["horovod_llm.ranks"] == "1"
    assert tags["horovod_llm.backend"] in ("horovod", "torch")
    assert tags["horovod_llm.dataset"] == read_manifest(fresh_run).fingerprint
    assert socket.gethostname() in tags["horovod_llm.hosts"]
    assert len(tags.get("mlflow.source.git.commit", "")) == 40
    every = list(params.values()) + list(tags.values())
    assert not [v for v in every if SECRET in v]
    assert params["spark.conf.spark.hadoop.fs.s3a.secret.key"] == "***"

    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert max(m.step for m in history) == end
    assert {m.step for m in history} >= set(range(5, end + 1, 5))
    for metric in ("train/lr", "perf/tokens_per_s", "perf/mfu", "perf/allreduce_share", "val/loss", "epoch/train_loss"):
        assert client.get_metric_history(run.info.run_id, metric), metric
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "training.png", "model.zip"} <= artifacts
    # The checkpoint keeps the run id: what the resume found.
    meta_step, meta_url = checkpoint.complete_checkpoints(fresh_run)[-1]
    assert meta_step == end
    from horovod_llm import storage

    assert storage.read_json(storage.join(meta_url, "meta.json"))["tracking"]["mlflow_run_id"] == run.info.run_id


def test_a_run_whose_output_is_on_s3_is_tracked(mlflow_server, fresh_run, s3_server):
    """On S3 (moto's server), the statistics files reach MLflow as artifacts read from
    S3, and model.zip, which can be large, as a link."""
    import boto3
    from mlflow.tracking import MlflowClient

    url, _ = mlflow_server
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="tracked")
    for path in Path(fresh_run).rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), "tracked", f"run/{path.relative_to(fresh_run)}")
    done = train("s3://tracked/run", url, "train.max_steps=10", f"storage.s3.endpoint_url={s3_server}", "tracking.experiment=on-s3")
    assert done.returncode == 0, done.stderr[-3000:]
    client = MlflowClient(tracking_uri=url)
    (run,) = client.search_runs([client.get_experiment_by_name("on-s3").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"summary.json", "training.png"}
    assert run.data.tags["horovod_llm.model_zip_url"] == "s3://tracked/run/model.zip"
    assert max(m.step for m in client.get_metric_history(run.info.run_id, "train/loss")) == 10


# Last in the module: it stops the module's server.
def test_training_finishes_when_the_tracking_server_goes_away(mlflow_server, fresh_run):
    from mlflow.tracking import MlflowClient

    url, server = mlflow_server
    client = MlflowClient(tracking_uri=url)
    steps = 60
    training = train(fresh_run, url, f"train.max_steps={steps}", "tracking.experiment=goes-away", wait=False)
    try:
        wait_for_metric_step(client, training, 10, time.monotonic() + 240, "goes-away")
        os.killpg(server.pid, signal.SIGKILL)  # the server goes away mid-run
        gone_at = time.time()
        _, stderr = training.communicate(timeout=300)
    finally:
        training.kill()
    assert training.returncode == 0, stderr[-3000:]
    assert f"step {steps}/{steps}" in stderr
    lines = stderr.splitlines()
    warnings = [i for i, line in enumerate(lines) if "MLflow tracking at" in line and "failed" in line]
    assert len(warnings) == 1, [lines[i] for i in warnings]  # warned once
    assert "training goes on without it" in lines[warnings[0]]
    # The warning came within MLflow's shortened retries of the server going away (its
    # default ones take minutes), and training never waited for it.
    warned_at = datetime.datetime.combine(datetime.date.today(), datetime.time.fromisoformat(lines[warnings[0]].split()[0])).timestamp()
    assert warned_at - gone_at < 60, (warned_at, gone_at)
    assert checkpoint.complete_checkpoints(fresh_run)[-1][0] == steps

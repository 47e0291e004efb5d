"""MLflow tracking's pieces that need no server (the server's tests:
tests/integration/test_mlflow_tracking.py)."""

import sys

import pytest

from horovod_llm.config import load_config
from horovod_llm.errors import UserError
from horovod_llm.launchers.launch import preflight
from horovod_llm.training.tracking import NullTracker, flat_params, run_url, start_tracking
from tests.conftest import TINY_CONFIG


def test_a_tracking_uri_without_mlflow_installed_is_refused_before_any_rank_starts(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow fails, as where it is absent
    config = load_config(TINY_CONFIG, [f"output_url={tmp_path}", "tracking.mlflow_uri=http://127.0.0.1:5000", "train.launcher=local", "train.num_proc=1"])
    with pytest.raises(UserError, match=r"MLflow is not installed: pip install 'horovod-llm\[mlflow\]', or unset tracking.mlflow_uri"):
        preflight(config)
    # a rank (on an executor without it) warns and trains untracked instead
    assert isinstance(start_tracking(config, 0, None, {}), NullTracker)


def test_mlflow_tracking_uri_in_the_environment_turns_tracking_on(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking:5000")
    assert load_config(TINY_CONFIG).tracking.mlflow_uri == "http://tracking:5000"
    assert load_config(TINY_CONFIG, ["tracking.mlflow_uri=http://other:5000"]).tracking.mlflow_uri == "http://other:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert load_config(TINY_CONFIG).tracking.mlflow_uri is None


def test_params_are_the_config_flattened_with_secrets_redacted():
    config = load_config(TINY_CONFIG, ["spark.conf.spark.hadoop.fs.s3a.secret.key=hunter2", "tracking.mlflow_uri=https://user:pw@mlflow.example.com"])
    params = flat_params(config)
    assert params["train.batch_size"] == "8" and params["model.n_embd"] == "32" and params["data.window_size"] == "32"
    assert params["spark.conf.spark.hadoop.fs.s3a.secret.key"] == "***"
    assert params["tracking.mlflow_uri"] == "https://***@mlflow.example.com"
    assert not [v for v in params.values() if "hunter2" in v or "pw@" in v]
    assert run_url("https://user:pw@mlflow.example.com/", "3", "abc") == "https://***@mlflow.example.com/#/experiments/3/runs/abc"


def test_a_checkpointed_run_the_server_does_not_know_is_replaced_by_a_new_one(tmp_path, caplog):
    """tracking.mlflow_uri pointed at another server than the checkpoint's run was on: a
    new run, with a warning, not a run left untracked. (A SQLite store: the same client
    code as a server's, without one.)"""
    from mlflow.tracking import MlflowClient

    from horovod_llm.training.tracking import MlflowTracker

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    config = load_config(TINY_CONFIG, [f"output_url={tmp_path}/run", f"tracking.mlflow_uri={uri}"])
    tracker = MlflowTracker(uri)
    tracker.start(config, "0123456789abcdef0123456789abcdef", 40, {"horovod_llm.launcher": "local"})
    tracker.log({"step": 41, "loss": 2.5, "time": 1.0}, {"train/loss": "loss"})
    tracker.close()
    assert not tracker.failed and tracker.run_id not in (None, "0123456789abcdef0123456789abcdef")
    assert "is not on" in caplog.text and "logging into a new run" in caplog.text
    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "run" and run.data.params["train.batch_size"] == "8" and run.data.tags["horovod_llm.launcher"] == "local"
    assert [(m.step, m.value) for m in client.get_metric_history(tracker.run_id, "train/loss")] == [(41, 2.5)]

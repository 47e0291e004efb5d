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

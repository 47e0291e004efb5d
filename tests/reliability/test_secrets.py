"""Credentials never reach logs, config dumps, checkpoints or statistics."""

import subprocess
import sys
from pathlib import Path

import pytest

from horovod_llm.config import is_secret_key, load_config, redact, redacted_dict
from tests.conftest import TINY_CONFIG

SECRET = "S3CR3T-do-not-leak-42"


@pytest.mark.parametrize(
    "key", ["spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key", "aws_secret_access_key", "api-token", "password", "AWS_SESSION_TOKEN"]
)
def test_secret_names_are_recognised(key):
    assert is_secret_key(key)


@pytest.mark.parametrize("key", ["max_new_tokens", "sample_tokens", "vocab_size", "tokenizer", "keep_last", "model_url", "endpoint_url"])
def test_ordinary_names_are_not(key):
    assert not is_secret_key(key)


def test_redaction_of_values_and_url_credentials():
    assert redact({"a": {"fs.s3a.secret.key": SECRET, "n": 3}}) == {"a": {"fs.s3a.secret.key": "***", "n": 3}}
    assert redact({"endpoint_url": f"http://user:{SECRET}@127.0.0.1:9000"}) == {"endpoint_url": "http://***@127.0.0.1:9000"}
    config = load_config(TINY_CONFIG, [f"spark.conf.spark.hadoop.fs.s3a.secret.key={SECRET}"])
    assert SECRET not in str(redacted_dict(config))


@pytest.mark.spark
@pytest.mark.horovod
def test_a_run_with_credentials_in_its_config_writes_them_nowhere(tmp_path, tiny_corpus):
    config_file = tmp_path / "with-keys.yaml"
    config_file.write_text(
        TINY_CONFIG.read_text()
        + f'\nstorage:\n  s3:\n    endpoint_url: "http://admin:{SECRET}@127.0.0.1:9/"\n'
        + f'\nemr:\n  tags:\n    api-token: "{SECRET}"\n'
    )
    spark_secret = f"spark.conf={{spark.hadoop.fs.s3a.secret.key: {SECRET}}}"
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "horovod_llm.cli", "--log-level", "DEBUG", "run", "--config", str(config_file), f"output_url={out}",
         f"data.input_url={tiny_corpus}", "train.max_steps=2", spark_secret],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stdout + result.stderr
    leaked = [str(p) for p in Path(out).rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked, leaked

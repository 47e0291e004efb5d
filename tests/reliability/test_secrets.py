"""Credentials never reach logs, config dumps, checkpoints or statistics."""

import json
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from horovod_llm.config import from_dict, load_config
from horovod_llm.redaction import is_secret_key, redact, redacted_dict
from tests.conftest import TINY_CONFIG

SECRET = "S3CR3T-do-not-leak-42"


# Keys in camelCase, and those Spark's spark.redaction.regex catches (issue 25).
CAMEL_KEYS = ["spark.ssl.keyStorePassword", "spark.hadoop.javax.jdo.option.ConnectionPassword", "spark.hadoop.fs.s3a.encryption.key", "apikey"]


@pytest.mark.parametrize(
    "key",
    ["spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.access.key", "aws_secret_access_key", "api-token", "password", "AWS_SESSION_TOKEN"]
    + CAMEL_KEYS
    + ["spark.authenticate.secret", "myAccessKey", "some.access.key.id", "SessionToken"],
)
def test_secret_names_are_recognised(key):
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key", ["max_new_tokens", "sample_tokens", "vocab_size", "tokenizer", "keep_last", "model_url", "endpoint_url", "tokenizer.model_url", "emr.key_name"]
)
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
    spark_keys = ["spark.hadoop.fs.s3a.secret.key", *(k for k in CAMEL_KEYS if k.startswith("spark."))]
    spark_secret = "spark.conf={" + ", ".join(f"{key}: {SECRET}" for key in spark_keys) + "}"
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "horovod_llm.cli", "--log-level", "DEBUG", "run", "--config", str(config_file), f"output_url={out}",
         f"data.input_url={tiny_corpus}", "train.max_steps=2", spark_secret, f"emr.tags.apikey={SECRET}"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert SECRET not in result.stdout + result.stderr
    written = [p for p in Path(out).rglob("*") if p.is_file()]
    # checkpoints (config.yaml, meta.json), the manifest, statistics, and model.zip's members
    assert {"config.yaml", "meta.json", "manifest.json", "model.zip"} <= {p.name for p in written}
    leaked = [str(p) for p in written if SECRET.encode() in p.read_bytes()]
    leaked += [f"{p}:{name}" for p in written if p.suffix == ".zip" for name, data in zip_members(p) if SECRET.encode() in data]
    assert not leaked, leaked


def zip_members(path: Path) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(path) as archive:
        return [(name, archive.read(name)) for name in archive.namelist()]


def test_a_failing_endpoint_is_reported_without_its_credentials():
    # issue 12: the one-line storage error printed the endpoint URL with user:password@
    result = subprocess.run(
        [sys.executable, "-m", "horovod_llm.cli", "train", "--config", str(TINY_CONFIG), "output_url=s3://bucket/run",
         f"storage.s3.endpoint_url=http://admin:{SECRET}@127.0.0.1:9/", "storage.s3.max_attempts=1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: storage at http://***@127.0.0.1:9/ failed for"), last
    assert SECRET not in result.stdout + result.stderr


SECRET_OVERRIDES = [
    "emr.s3_url=s3://bkt/proj",
    f"storage.s3.endpoint_url=http://admin:{SECRET}@127.0.0.1:9/",
    f"emr.tags.api-token={SECRET}",
    f"spark.conf.spark.hadoop.fs.s3a.secret.key={SECRET}",
    f"emr.train_conf.spark.hadoop.fs.s3a.access.key={SECRET}",
    f"emr.tags.apikey={SECRET}",
    *(f"spark.conf.{key}={SECRET}" for key in CAMEL_KEYS[:3]),
    *(f"emr.train_conf.{key}={SECRET}" for key in CAMEL_KEYS[:3]),
]


@pytest.mark.parametrize("command", [["up", "--dry-run"], ["submit", "--dry-run", "--cluster-id", "j-DRY"]])
def test_emr_dry_runs_print_no_credentials(command, capsys, monkeypatch):
    from horovod_llm.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # a request would fail: none is sent
    assert main(["emr", *command, *SECRET_OVERRIDES]) == 0
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    plan = json.loads(captured.out)
    assert plan["requests"]  # the plan itself is there, only redacted
    if command[0] == "submit":
        train = next(s for s in plan["requests"][-1]["params"]["Steps"] if s["Name"] == "horovod-llm train")
        args = train["HadoopJarStep"]["Args"]
        assert "spark.task.cpus=4" in " ".join(args) and "access.key" not in " ".join(args)  # off the command line
        assert not [key for key in CAMEL_KEYS[:3] if key in " ".join(args)]  # camelCase ones too
        (shipped,) = plan["files"].values()
        assert "spark.hadoop.fs.s3a.access.key: '***'" in shipped


@pytest.mark.spark
@pytest.mark.horovod
def test_horovodrun_ranks_get_credentials_that_no_file_holds(fresh_run, tiny_dataset, tmp_path, monkeypatch):
    # issue 12: the launcher wrote the unredacted config for horovodrun to a temporary file
    import tempfile
    import threading

    from horovod_llm.config import to_dict
    from horovod_llm.launchers.launch import launch_training
    from tests.e2e.test_train import with_output

    config, _ = tiny_dataset
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    run = with_output(config, fresh_run, launcher="horovodrun", max_steps=2, checkpoint_interval=0)
    run = from_dict({**to_dict(run), "spark": {**to_dict(run)["spark"], "conf": {"spark.hadoop.fs.s3a.secret.key": SECRET}}})
    seen, stop = {}, threading.Event()

    def watch():
        while not stop.is_set():
            for path in scratch.rglob("*"):
                if path.is_file():
                    seen[str(path)] = path.read_bytes()
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert launch_training(run)["summary"]["steps"] == 2
    finally:
        stop.set()
        watcher.join()
    assert any(b"spark.hadoop.fs.s3a.secret.key: '***'" in data for data in seen.values()), list(seen)
    assert not [path for path, data in seen.items() if SECRET.encode() in data]


def test_a_rank_started_from_a_redacted_file_gets_the_credentials_back(tmp_path):
    from horovod_llm.launchers.secret_channel import fetch_secrets, serving_secrets
    from horovod_llm.redaction import redacted_yaml, secret_values
    from horovod_llm.training.train import with_secrets
    from horovod_llm.worker import rank_config

    config = load_config(TINY_CONFIG, [f"storage.s3.endpoint_url=http://admin:{SECRET}@127.0.0.1:9/", f"spark.conf.spark.hadoop.fs.s3a.secret.key={SECRET}"])
    path = tmp_path / "resolved.yaml"
    path.write_text(redacted_yaml(config))
    assert SECRET not in path.read_text()
    redacted = rank_config([str(path)])
    assert redacted.storage.s3.endpoint_url == "http://***@127.0.0.1:9/"
    for bind in (None, "127.0.0.1"):  # a Unix socket for ranks on this machine; TCP with a token for other hosts
        with serving_secrets(secret_values(config), bind) as address:
            assert SECRET not in address
            assert with_secrets(redacted, fetch_secrets(address)) == config


def test_the_driver_gives_credentials_to_no_stranger(tmp_path):
    from horovod_llm.launchers.secret_channel import fetch_secrets, serving_secrets

    with serving_secrets({"password": SECRET}, "127.0.0.1") as address:
        kind, host, port, _token = address.split(":")
        with pytest.raises(RuntimeError, match="refused this rank its credentials"):
            fetch_secrets(f"{kind}:{host}:{port}:{'0' * 32}")  # a wrong token
        assert fetch_secrets(address) == {"password": SECRET}
    with serving_secrets({"password": SECRET}, None) as address:
        # another local user: the server does not answer it
        script = f"import os; from horovod_llm.launchers.secret_channel import fetch_secrets; os.setuid(65534); print(fetch_secrets({address!r}))"
        other = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert other.returncode != 0 and SECRET not in other.stdout and "refused this rank its credentials" in other.stderr
        assert fetch_secrets(address) == {"password": SECRET}  # this user's process, as a rank is
    with pytest.raises(OSError):  # and once the job is over, nothing answers
        fetch_secrets(address)

"""The `horovod-llm` command as a user runs it: subprocesses, exit codes, stdout/stderr."""

import os
import subprocess
import sys

import pytest

from tests.conftest import TINY_CONFIG

COMMANDS = ["doctor", "preprocess", "train", "generate", "evaluate", "serve", "run"]


def cli(*args, timeout=600):
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    return subprocess.run([sys.executable, "-m", "horovod_llm.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_for_every_command(command):
    result = cli(command, "--help")
    assert result.returncode == 0 and "usage: horovod-llm " + command in result.stdout


@pytest.mark.spark
@pytest.mark.horovod
def test_run_then_generate_end_to_end(tmp_path, tiny_corpus):
    out = tmp_path / "run"
    result = cli("run", "--config", str(TINY_CONFIG), f"output_url={out}", f"data.input_url={tiny_corpus}")
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Traceback" not in result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("--- sample from") and "step 8" in lines[0]
    assert lines[1].startswith("KING:")
    assert lines[-1].startswith("--- final validation loss ")
    samples = list((out / "samples").iterdir())
    assert len(samples) == 1 and samples[0].read_text().startswith("KING:")
    assert (out / "checkpoints" / "step-00000008" / "COMPLETE").exists()

    generated = cli("generate", "--checkpoint", str(out), "--prompt", "Where is", "--max-new-tokens", "12", "--seed", "3")
    assert generated.returncode == 0, generated.stderr
    assert generated.stdout.startswith("Where is") and len(generated.stdout.strip()) > len("Where is")
    again = cli("generate", "--checkpoint", str(out / "checkpoints" / "step-00000004"), "--prompt", "Where is", "--max-new-tokens", "12", "--seed", "3")
    assert again.returncode == 0 and again.stdout.startswith("Where is")


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[-1]


def test_bad_config_value_exits_with_one_line(tmp_path):
    assert_user_error(
        cli("preprocess", "--config", str(TINY_CONFIG), "data.window_size=8", "data.overlap=8"), "data.window_size (8) must be larger than data.overlap (8)"
    )
    assert_user_error(cli("train", "--config", str(TINY_CONFIG), "train.num_procs=2"), "train.num_procs")


def test_train_without_dataset_says_how_to_build_it(tmp_path):
    result = cli("train", "--config", str(TINY_CONFIG), f"output_url={tmp_path}", "train.launcher=local", "train.num_proc=1")
    assert_user_error(result, "no complete dataset", "horovod-llm preprocess")


def test_generate_without_checkpoint(tmp_path):
    assert_user_error(cli("generate", "--checkpoint", str(tmp_path), "--prompt", "x"), "no complete checkpoint")
    assert_user_error(cli("generate", "--checkpoint", str(tmp_path), "--temperature", "-1"), "--temperature")


@pytest.mark.spark
def test_missing_corpus_fails_fast(tmp_path):
    result = cli("preprocess", "--config", str(TINY_CONFIG), f"output_url={tmp_path / 'out'}", f"data.input_url={tmp_path / 'nowhere'}")
    assert_user_error(result, "does not exist", "data.input_url")
    assert not (tmp_path / "out" / "dataset" / "manifest.json").exists()


@pytest.mark.spark
def test_doctor_reports_every_part():
    result = cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    parts = [line.split()[0] for line in result.stdout.strip().splitlines()]
    assert parts == ["python", "torch", "horovod", "java", "spark", "petastorm", "corpus"]
    assert all(line.rstrip().split("  ")[-1].strip().startswith("OK") for line in result.stdout.strip().splitlines())

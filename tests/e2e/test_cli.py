"""The `horovod-llm` command as a user runs it: subprocesses, exit codes, stdout/stderr."""

import os
import subprocess
import sys

import pytest

from tests.conftest import TINY_CONFIG

COMMANDS = ["doctor", "preprocess", "train", "generate", "evaluate", "serve", "run"]


def cli(*args, timeout=600):
    """The command's result, its output decoded as written: text=True would turn each
    carriage return into a newline, and a log file's `\r` noise would go unseen."""
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    result = subprocess.run([sys.executable, "-m", "horovod_llm.cli", *args], capture_output=True, timeout=timeout, env=env)
    result.stdout, result.stderr = result.stdout.decode("utf-8", errors="replace"), result.stderr.decode("utf-8", errors="replace")
    return result


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
    # Output to a file or pipe (issue 16): plain log lines, no progress bar of Spark's
    # nor ours, no carriage return or terminal escape.
    for stream in (result.stdout, result.stderr):
        assert "\r" not in stream and "\x1b" not in stream, repr(stream[:2000])
    assert "[Stage " not in result.stderr and "%|" not in result.stderr
    assert "horovod_llm.training.loop: step 8/8 | epoch 0 | loss " in result.stderr  # the step lines stay
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


def make_corpus(folder, files):
    folder.mkdir()
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return folder


SMALL_DOCS = {f"doc{i}.txt": f"short text number {i}, a few words.\n".encode() for i in range(30)}
BAD_CORPORA = {
    "missing path": (None, [], ("does not exist", "data.input_url")),
    "empty corpus": ({"empty.txt": b"  \n\n"}, [], ("holds no text", "data.input_url")),
    "only binary files": ({"a.txt": b"\x89PNG\x00\x00binary", "b.md": b"\x00\x01\x02"}, [], ("holds no text",)),
    "too small for one window": (SMALL_DOCS, ["tokenizer.vocab_size=60", "data.window_size=512", "data.overlap=0"], ("too small for one", "data.window_size")),
    "vocabulary too large": (SMALL_DOCS, ["tokenizer.vocab_size=5000"], ("tokenizer.vocab_size (5000) is too large", "lower tokenizer.vocab_size")),
    "window not above overlap": (SMALL_DOCS, ["data.window_size=16", "data.overlap=20"], ("data.window_size (16) must be larger than data.overlap (20)",)),
}


@pytest.mark.spark
@pytest.mark.parametrize("case", list(BAD_CORPORA))
def test_bad_corpus_is_refused_in_one_line(case, tmp_path):
    files, overrides, fragments = BAD_CORPORA[case]
    corpus = make_corpus(tmp_path / "corpus", files) if files is not None else tmp_path / "nowhere"
    out = tmp_path / "out"
    result = cli("preprocess", "--config", str(TINY_CONFIG), f"output_url={out}", f"data.input_url={corpus}", "data.split_on_blank_lines=false", *overrides)
    assert_user_error(result, *fragments)
    assert not (out / "dataset" / "manifest.json").exists()


@pytest.mark.spark
def test_unreadable_s3_corpus_is_refused_in_one_line(tmp_path, s3_server):
    result = cli("preprocess", "--config", str(TINY_CONFIG), f"output_url={tmp_path}", "data.input_url=s3://no-such-bucket/corpus/")
    assert_user_error(result, "bucket 'no-such-bucket' does not exist or is not readable", "credentials")


@pytest.mark.spark
def test_doctor_reports_every_part():
    result = cli("doctor")
    assert result.returncode == 0, result.stdout + result.stderr
    parts = [line.split()[0] for line in result.stdout.strip().splitlines()]
    assert parts == ["python", "torch", "horovod", "java", "spark", "petastorm", "corpus"]
    assert all(line.rstrip().split("  ")[-1].strip().startswith("OK") for line in result.stdout.strip().splitlines())

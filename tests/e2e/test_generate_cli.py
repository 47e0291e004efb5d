"""`horovod-llm generate` and `evaluate` as a user runs them, on the tiny trained checkpoint."""

import json
import os
import subprocess
import sys

import pytest

from horovod_llm import checkpoint
from horovod_llm.inference.evaluate import evaluate_text
from horovod_llm.inference.generate import TextGenerator
from horovod_llm.inference.sampling import Sampling
from tests import tiny_checkpoint

QUEEN = "And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n"


def cli(*args, stdin: str = ""):
    return subprocess.run([sys.executable, "-m", "horovod_llm.cli", *args], input=stdin, capture_output=True, text=True, timeout=300, env=dict(os.environ))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run's output_url holding one tiny checkpoint, and a model.zip of it beside."""
    out = tmp_path_factory.mktemp("run")
    tiny_checkpoint.save_tiny_checkpoint(str(out), step=2)
    checkpoint.export_model_zip(str(out), str(out / "export" / "model.zip"))
    return out


def assert_user_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0]


def test_generate_prints_only_the_text_on_stdout(run):
    result = cli("generate", "--checkpoint", str(run), "--prompt", "QUEEN:\n", "--temperature", "0", "--max-new-tokens", "40", "--threads", "0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "QUEEN:\n" + QUEEN + "\n"
    assert "step 2" in result.stderr and "tokens/s" in result.stderr and "stopped by eos" in result.stderr


def test_the_prompt_from_stdin_or_a_file_and_a_model_zip(run, tmp_path):
    (tmp_path / "prompt.txt").write_text("QUEEN:\n")
    common = ["--temperature", "0", "--max-new-tokens", "40"]
    from_stdin = cli("generate", "--checkpoint", str(run / "export" / "model.zip"), *common, stdin="QUEEN:\n")
    from_file = cli("generate", "--checkpoint", str(run / "checkpoints" / "step-00000002"), "--prompt-file", str(tmp_path / "prompt.txt"), *common)
    assert from_stdin.returncode == 0 and from_file.returncode == 0, from_stdin.stderr + from_file.stderr
    assert from_stdin.stdout == from_file.stdout == "QUEEN:\n" + QUEEN + "\n"
    assert "model.zip (step 2)" in from_stdin.stderr


def test_seeded_samples_with_a_stop_string_are_reproducible(run):
    args = [
        "generate",
        "--checkpoint",
        str(run),
        "--prompt",
        "KING:\n",
        "--temperature",
        "1.3",
        "--top-p",
        "0.95",
        "--seed",
        "5",
        "--num-samples",
        "3",
        "--stop",
        "\\n",
    ]
    first, again = cli(*args), cli(*args)
    assert first.returncode == 0, first.stderr
    assert first.stdout == again.stdout
    samples = first.stdout.split("---\n")
    generator = TextGenerator(tiny_checkpoint.tiny_model(), tiny_checkpoint.tiny_tokenizer())
    expected = generator.complete("KING:\n", Sampling(200, 1.3, 50, 0.95, 5, ("\n",)), num_samples=3)
    assert samples == ["KING:\n" + c.text + "\n" for c in expected]
    assert all(sample.count("\n") == 2 for sample in samples)  # the prompt's, and the one ending the sample


def test_bad_sampling_values_are_one_line_errors(run):
    assert_user_error(cli("generate", "--checkpoint", str(run), "--temperature", "-1", "--top-p", "1.5"), "--temperature (-1.0)", "--top-p (1.5)")
    assert_user_error(
        cli("generate", "--checkpoint", str(run), "--max-new-tokens", "0", "--top-k", "-3", "--seed", "-1", "--num-samples", "0"),
        "--max-new-tokens (0)",
        "--top-k (-3)",
        "--seed (-1)",
        "--num-samples (0)",
    )


def test_evaluate_prints_one_json_object(run, tmp_path):
    text = "".join(tiny_checkpoint.DOCUMENTS) * 2
    (tmp_path / "text.txt").write_text(text)
    result = cli("evaluate", "--checkpoint", str(run), "--text-file", str(tmp_path / "text.txt"), "--batch-size", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1
    scores = json.loads(lines[0])
    expected = evaluate_text(tiny_checkpoint.tiny_model(), tiny_checkpoint.tiny_tokenizer(), text)
    assert scores["step"] == 2 and scores["characters"] == len(text) and scores["tokens"] == expected["tokens"]
    for key in ("nll_per_token", "perplexity", "nats_per_character", "bits_per_character", "word_perplexity", "token_accuracy"):
        assert scores[key] == pytest.approx(expected[key], rel=1e-4), key
    assert_user_error(cli("evaluate", "--checkpoint", str(run), "--text-file", str(tmp_path / "missing.txt")), "--text-file", "does not exist")

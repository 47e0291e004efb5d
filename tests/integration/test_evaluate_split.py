"""`evaluate --split val` on a dataset preprocessed by Spark, read back through Petastorm."""

import dataclasses
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from horovod_llm import checkpoint, layout, storage
from horovod_llm.cli import main
from horovod_llm.config import load_config
from horovod_llm.data.preprocess import run_preprocess
from horovod_llm.errors import UserError
from horovod_llm.inference.evaluate import evaluate_split
from horovod_llm.launchers.launch import launch_training
from horovod_llm.model import GPT, GPTConfig
from tests import tiny_checkpoint
from tests.conftest import tiny_config

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def model_for(tiny_dataset):
    config, manifest = tiny_dataset
    torch.manual_seed(0)
    args = GPTConfig(vocab_size=manifest.tokenizer.vocab_size, block_size=manifest.window_size, n_layer=1, n_head=2, n_embd=16)
    return GPT(args).eval(), storage.read_bytes(layout.tokenizer_url(config.output_url))


def test_validation_windows_score_each_token_once(tiny_dataset, model_for):
    config, manifest = tiny_dataset
    model, tokenizer_bytes = model_for
    window_size, overlap = manifest.window_size, manifest.overlap
    result = evaluate_split(model, tokenizer_bytes, config.output_url, "val", batch_size=4)
    assert result["tokens"] == manifest.splits["val"].windows * (window_size - overlap)
    assert result["stride"] == window_size - overlap and result["split"] == "val"
    # the same windows read directly from the Parquet parts, scored in one forward pass
    ids = torch.from_numpy(np.stack(pq.read_table(layout.split_url(config.output_url, "val")).column("ids").to_pylist()).astype(np.int64))
    with torch.no_grad():
        logits, _ = model(ids[:, :-1])
    nll = F.cross_entropy(logits[:, overlap:].reshape(-1, logits.size(-1)), ids[:, overlap + 1 :].reshape(-1), reduction="sum")
    assert result["nll_per_token"] == pytest.approx(float(nll) / result["tokens"], rel=1e-4)
    # random weights: about uniform over the vocabulary
    assert result["perplexity"] == pytest.approx(manifest.tokenizer.vocab_size, rel=0.2)
    assert result["characters"] > result["tokens"] > result["words"] > 0  # 300 BPE pieces: about 2 characters each


def test_validation_keeps_half_a_window_under_a_short_training_stride(tmp_path, tiny_corpus, spark):
    # The recipe's stride of an eighth where the budget repeats the text (issue 28): training
    # windows 4 ids apart, validation's 16, so that validation spends 2 positions per
    # scored token instead of 8.
    overrides = ("data.overlap=28", "embedding.word2vec.enabled=false", "model.init_from_word2vec=false")
    config = tiny_config(tmp_path / "out", tiny_corpus, *overrides)
    manifest = run_preprocess(config, spark)
    assert (manifest.overlap_of("train"), manifest.overlap_of("val")) == (28, 16)
    first_part = storage.join(layout.split_url(config.output_url, "val"), manifest.splits["val"].files[0])
    rows = np.array(pq.read_table(first_part).column("ids").to_pylist())
    assert len(rows) > 1 and (rows[1:, :17] == rows[:-1, 16:]).all()  # a val part is one stream, not shuffled
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=manifest.tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16)).eval()
    tokenizer_bytes = storage.read_bytes(layout.tokenizer_url(config.output_url))
    for split, stride in (("val", 16), ("train", 4)):
        result = evaluate_split(model, tokenizer_bytes, config.output_url, split, batch_size=64)
        assert (result["stride"], result["tokens"]) == (stride, manifest.splits[split].windows * stride), split
    # training's validation scores the same way: 16 targets a window, not 4
    launch_training(dataclasses.replace(config, train=dataclasses.replace(config.train, launcher="local", num_proc=1, max_steps=2, checkpoint_interval=0)))
    last = json.loads(storage.read_text(storage.join(layout.stats_url(config.output_url), "evals.jsonl")).splitlines()[-1])
    assert last["val_windows"] > 0 and last["val_tokens"] == last["val_windows"] * 16


def test_the_cli_reads_the_split_of_the_run_named(tiny_dataset, model_for, tmp_path, capsys):
    config, _ = tiny_dataset
    model, tokenizer_bytes = model_for
    checkpoint.save_checkpoint(str(tmp_path), 1, model, None, load_config(None), tokenizer_bytes, {})
    assert main(["evaluate", "--checkpoint", str(tmp_path), "--split", "val", "--output-url", config.output_url]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["step"] == 1 and scores["dataset"] == storage.normalize(config.output_url) and scores["tokens"] > 0


def test_a_checkpoint_with_another_tokenizer_is_refused(tiny_dataset):
    config, _ = tiny_dataset
    with pytest.raises(UserError, match="another tokenizer"):
        evaluate_split(tiny_checkpoint.tiny_model(), tiny_checkpoint.tiny_tokenizer(), config.output_url)

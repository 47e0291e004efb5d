"""Evaluation: windows by hand, and every figure against a direct forward pass."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from horovod_llm.data import tokenizer
from horovod_llm.data.windows import sliding_windows
from horovod_llm.errors import UserError
from horovod_llm.inference.evaluate import (
    count_words,
    evaluate_text,
    piece_texts,
    run_of_checkpoint,
    score_ids,
    score_windows,
    scoring_windows,
    summarize,
)
from tests import tiny_checkpoint


@pytest.fixture(scope="module")
def model():
    return tiny_checkpoint.tiny_model()


@pytest.fixture(autouse=True)
def no_grad():
    with torch.no_grad():  # the tests' own forward passes
        yield


def test_scoring_windows_by_hand():
    # 10 ids, 9 targets; windows of 4 inputs moved 2 at a time
    assert scoring_windows(10, block_size=4, stride=2) == [(0, 4, 0), (2, 4, 2), (4, 4, 2), (5, 4, 3)]
    assert scoring_windows(10, block_size=4, stride=4) == [(0, 4, 0), (4, 4, 0), (5, 4, 3)]
    assert scoring_windows(3, block_size=4, stride=2) == [(0, 2, 0)]  # shorter than the context
    assert scoring_windows(1, block_size=4, stride=2) == []
    with pytest.raises(ValueError, match="stride"):
        scoring_windows(10, block_size=4, stride=5)


@pytest.mark.parametrize("num_ids, block_size, stride", [(2, 4, 1), (37, 8, 3), (100, 16, 8), (100, 16, 16), (17, 16, 5)])
def test_every_target_is_scored_once_with_enough_context(num_ids, block_size, stride):
    scored = []
    for start, length, first in scoring_windows(num_ids, block_size, stride):
        assert start >= 0 and start + length + 1 <= num_ids and length == min(block_size, num_ids - 1)
        targets = range(start + 1 + first, start + length + 1)
        if start > 0:
            assert all(t - start >= block_size - stride + 1 for t in targets)  # ids of context, counted as inputs
        scored += targets
    assert scored == list(range(1, num_ids))


def test_count_words():
    assert count_words("Now is  the\nwinter ") == 4
    assert count_words("") == 0
    assert count_words("ter of", after_space=False) == 1  # "ter" ends a word begun before
    assert count_words(" of", after_space=False) == 1


def test_long_ids_are_scored_like_the_windows_say(model):
    ids = [tokenizer.BOS_ID] + tiny_checkpoint.encode(" ".join(tiny_checkpoint.DOCUMENTS))[:24]  # 25 ids, block_size 16
    totals = score_ids(model, ids, stride=8, batch_size=1)
    ids_t = torch.tensor(ids)
    # window 1: inputs ids[0:16] score targets ids[1:17]; window 2: inputs ids[8:24], targets from ids[17] on
    logits_a, _ = model(ids_t[None, 0:16])
    logits_b, _ = model(ids_t[None, 8:24])
    nll = F.cross_entropy(logits_a[0], ids_t[1:17], reduction="sum") + F.cross_entropy(logits_b[0, 8:], ids_t[17:25], reduction="sum")
    correct = int((logits_a[0].argmax(-1) == ids_t[1:17]).sum() + (logits_b[0, 8:].argmax(-1) == ids_t[17:25]).sum())
    assert totals.tokens == 24 and totals.correct == correct
    assert totals.nll == pytest.approx(float(nll), rel=1e-5)
    batched = score_ids(model, ids, stride=8, batch_size=8)
    assert batched.tokens == 24 and batched.nll == pytest.approx(totals.nll, rel=1e-5)


def test_shards_of_the_windows_add_up_to_the_whole(model):
    ids = [tokenizer.BOS_ID] + tiny_checkpoint.encode(" ".join(tiny_checkpoint.DOCUMENTS))[:60]
    whole = score_ids(model, ids, stride=4, batch_size=3)
    shards = [score_ids(model, ids, stride=4, batch_size=3, rank=rank, world_size=3) for rank in range(3)]
    assert all(shard.tokens for shard in shards) and sum(shard.tokens for shard in shards) == whole.tokens == 60
    assert sum(shard.correct for shard in shards) == whole.correct
    assert sum(shard.nll for shard in shards) == pytest.approx(whole.nll, rel=1e-5)


def test_evaluate_text_against_a_direct_forward_pass(model):
    text = "QUEEN:\nAnd all the clouds that lour'd"  # shorter than the context: one pass
    ids = torch.tensor([tokenizer.BOS_ID] + tiny_checkpoint.encode(text))
    assert len(ids) <= tiny_checkpoint.BLOCK_SIZE
    logits, _ = model(ids[None, :-1])
    nll = float(F.cross_entropy(logits[0], ids[1:], reduction="sum"))
    tokens = len(ids) - 1
    result = evaluate_text(model, tiny_checkpoint.tiny_tokenizer(), text)
    assert result["tokens"] == tokens and result["characters"] == len(text) == 37 and result["words"] == 7
    assert result["nll_per_token"] == pytest.approx(nll / tokens, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-5)
    assert result["nats_per_character"] == pytest.approx(nll / 37, rel=1e-5)
    assert result["bits_per_character"] == pytest.approx(nll / 37 / math.log(2), rel=1e-5)
    assert result["word_perplexity"] == pytest.approx(math.exp(nll / 7), rel=1e-5)
    assert result["token_accuracy"] == pytest.approx(float((logits[0].argmax(-1) == ids[1:]).float().mean()))
    assert result["token_accuracy"] > 0.7  # it learned this passage


def test_a_learned_text_scores_better_than_a_shuffled_one(model):
    learned = tiny_checkpoint.DOCUMENTS[0] + tiny_checkpoint.DOCUMENTS[1]
    words = learned.split()
    shuffled = " ".join(words[i] for i in np.random.default_rng(0).permutation(len(words)))
    a = evaluate_text(model, tiny_checkpoint.tiny_tokenizer(), learned * 3)  # longer than the context: windows
    b = evaluate_text(model, tiny_checkpoint.tiny_tokenizer(), shuffled * 3)
    assert a["tokens"] > 4 * tiny_checkpoint.BLOCK_SIZE and a["stride"] == 8
    assert a["bits_per_character"] < b["bits_per_character"] and a["token_accuracy"] > b["token_accuracy"]


def test_empty_text_and_bad_stride_are_refused(model):
    with pytest.raises(UserError, match="empty"):
        evaluate_text(model, tiny_checkpoint.tiny_tokenizer(), "")
    with pytest.raises(UserError, match="--stride \\(17\\)"):
        evaluate_text(model, tiny_checkpoint.tiny_tokenizer(), "some text", stride=17)


def test_stored_windows_score_each_token_once(model):
    # windows as preprocessing cuts them: 16 inputs + 1, overlap 8, documents joined with EOS
    stream = np.array(
        [tokenizer.EOS_ID] + tiny_checkpoint.encode(tiny_checkpoint.DOCUMENTS[0]) + [tokenizer.EOS_ID] + tiny_checkpoint.encode(tiny_checkpoint.DOCUMENTS[1])
    )
    windows = sliding_windows(stream, 16, 8)
    assert len(windows) >= 3
    texts = piece_texts(tokenizer.load(tiny_checkpoint.tiny_tokenizer()))
    result = summarize(score_windows(model, [windows[:2], windows[2:]], 8, texts))
    ids = torch.from_numpy(windows.astype(np.int64))
    logits, _ = model(ids[:, :-1])
    nll = F.cross_entropy(logits[:, 8:].reshape(-1, 120), ids[:, 9:].reshape(-1), reduction="sum")
    # scored: every id of the stream after its first 9 (8 overlap + the first input), up to the last window's end
    scored_ids = stream[9 : 8 * len(windows) + 9]
    assert result["tokens"] == len(scored_ids) == 8 * len(windows)
    assert result["characters"] == sum(len(texts[i]) for i in scored_ids)
    # the model knows these passages: a small NLL, summed in another order
    assert result["nll_per_token"] == pytest.approx(float(nll) / result["tokens"], rel=1e-3)
    # counted window by window, words cut at a window's edge still count once
    whole = "".join(texts[i] for i in scored_ids)
    assert result["words"] == count_words(whole, after_space=texts[stream[8]][-1:].isspace()) > 10


def test_run_of_checkpoint():
    assert run_of_checkpoint("/runs/a/checkpoints/step-00000010") == "/runs/a"
    assert run_of_checkpoint("s3://bucket/run/checkpoints/step-00000010/") == "s3://bucket/run"
    assert run_of_checkpoint("/runs/a/model.zip") is None

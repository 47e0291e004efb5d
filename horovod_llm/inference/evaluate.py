"""Scoring a checkpoint on a text or on the dataset's validation split.

A text is encoded after BOS and every one of its tokens is scored: the first from BOS
alone, the others from the tokens before them. A text longer than the model's context
is scored with overlapping windows of `block_size` ids moved `stride` ids at a time
(default `block_size // 2`); each window scores only the targets no earlier window
scored, so every token counts once and every token after the first window is predicted
from at least `block_size - stride` ids of context. Windows have the same length, so
they go through the model in batches.

A dataset split is stored as windows of `window_size + 1` ids that start
`window_size - overlap` ids apart, with the split's own overlap (`Manifest.overlap_of`:
validation's at most half a window): of each window only the last `window_size - overlap`
targets are scored, which again counts every token once (except the first `overlap`
of each part's stream) and gives each at least `overlap` ids of context.

Per-token figures depend on the tokenizer; per-character and per-word figures do not,
so they compare models with different tokenizers.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from horovod_llm import storage
from horovod_llm.data import dataset, tokenizer
from horovod_llm.data.manifest import read_manifest
from horovod_llm.errors import UserError
from horovod_llm.model import GPT


@dataclass
class Totals:
    nll: float = 0.0  # summed negative log-likelihood of the scored tokens, in nats
    correct: int = 0  # scored tokens that were the model's most likely next id
    tokens: int = 0
    characters: int = 0
    words: int = 0
    windows: int = 0  # windows scored

    def add(self, nll: float, correct: int, tokens: int) -> None:
        self.nll += nll
        self.correct += correct
        self.tokens += tokens


def scoring_windows(num_ids: int, block_size: int, stride: int) -> list[tuple[int, int, int]]:
    """(start, length, first) for each window over ids[0:num_ids]: the window's inputs are
    ids[start : start + length], its targets ids[start + 1 : start + length + 1], and it
    scores targets from index `first` on (window-local). Every target ids[1:] is scored
    exactly once; all windows have the same length."""
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride ({stride}) must be between 1 and block_size ({block_size})")
    num_targets = num_ids - 1
    if num_targets < 1:
        return []
    length = min(block_size, num_targets)
    windows = [(0, length, 0)]
    scored = length  # targets ids[1 : scored + 1] are scored
    while scored < num_targets:
        end = min(scored + stride, num_targets)
        start = end - length
        windows.append((start, length, scored - start))
        scored = end
    return windows


def count_words(text: str, after_space: bool = True) -> int:
    """Whitespace-separated words in text; a text that continues a word (not after_space)
    does not start a new one."""
    words = len(text.split())
    if words and not after_space and not text[0].isspace():
        words -= 1
    return words


def summarize(totals: Totals) -> dict:
    """The figures `horovod-llm evaluate` prints, from the summed counts."""
    t = totals

    def exp(x: float) -> float | None:
        return math.exp(x) if x < 700 else None  # None: beyond a float (JSON has no inf)

    mean_nll = t.nll / t.tokens
    nats_per_character = t.nll / t.characters if t.characters else None
    return {
        "tokens": t.tokens,
        "characters": t.characters,
        "words": t.words,
        "nll_per_token": mean_nll,
        "perplexity": exp(mean_nll),
        "nats_per_character": nats_per_character,
        "bits_per_character": nats_per_character / math.log(2) if nats_per_character is not None else None,
        "word_perplexity": exp(t.nll / t.words) if t.words else None,
        "token_accuracy": t.correct / t.tokens,
    }


@torch.no_grad()
def score_batch(model: GPT, inputs: torch.Tensor, targets: torch.Tensor, scored: torch.Tensor) -> tuple[float, int, int]:
    """(summed NLL in nats, correct, count) over the targets (B, T) where `scored` (B, T) is true."""
    device = model.wte.weight.device  # the model's: a GPU, or the CPU
    inputs, targets, scored = inputs.to(device), targets.to(device), scored.to(device)
    # The vocabulary's projection, the softmax and the argmax only where a target is
    # scored: a window scores the targets after its overlap (half of them in training's
    # validation, an eighth at the recipe's short training stride), and the projection is
    # the widest matmul of a small model's forward pass.
    hidden = model.hidden(inputs)[scored]  # (N, C)
    picked = targets[scored]  # (N,)
    logits = model.lm_head(hidden)  # (N, vocab)
    nll = F.cross_entropy(logits, picked, reduction="none")
    correct = logits.argmax(dim=-1) == picked
    return float(nll.double().sum()), int(correct.sum()), int(picked.numel())


def score_ids(model: GPT, ids: list[int], stride: int, batch_size: int = 8, rank: int = 0, world_size: int = 1) -> Totals:
    """NLL, correct and count over the targets ids[1:], scored with `scoring_windows`;
    with world_size > 1, those of every world_size-th window from the rank-th: the
    ranks' totals add up to the whole."""
    windows = scoring_windows(len(ids), model.config.block_size, stride)[rank::world_size]
    ids_t = torch.tensor(ids, dtype=torch.long)
    totals = Totals()
    for i in range(0, len(windows), batch_size):
        batch = windows[i : i + batch_size]
        length = batch[0][1]
        inputs = torch.stack([ids_t[start : start + length] for start, _, _ in batch])  # (B, T)
        targets = torch.stack([ids_t[start + 1 : start + length + 1] for start, _, _ in batch])
        scored = torch.arange(length).unsqueeze(0) >= torch.tensor([first for _, _, first in batch]).unsqueeze(1)  # (B, T)
        totals.add(*score_batch(model, inputs, targets, scored))
    return totals


def evaluate_text(model: GPT, tokenizer_bytes: bytes, text: str, stride: int | None = None, batch_size: int = 8) -> dict:
    """Scores of `text`, encoded after BOS (see the module's docstring for the windows)."""
    if not text:
        raise UserError("the text to evaluate is empty: pass a file with some text in it")
    block_size = model.config.block_size
    stride = stride or max(1, block_size // 2)
    if not 1 <= stride <= block_size:
        raise UserError(f"--stride ({stride}) must be between 1 and the model's block_size ({block_size})")
    ids = [tokenizer.BOS_ID] + tokenizer.encode(tokenizer.load(tokenizer_bytes), [text])[0]
    model.eval()
    totals = score_ids(model, ids, stride, batch_size)
    totals.characters, totals.words = len(text), count_words(text)
    return summarize(totals) | {"stride": stride, "context": block_size}


def piece_texts(processor) -> list[str]:
    """The text each id stands for: control ids (PAD, BOS, EOS) none, UNK one character."""
    texts = []
    for i in range(processor.get_piece_size()):
        if processor.is_control(i):
            texts.append("")
        elif processor.is_unknown(i):
            texts.append("?")
        else:
            texts.append(processor.id_to_piece(i).replace("\u2581", " ").replace(tokenizer.NEWLINE, "\n"))
    return texts


def text_counts(batches: Iterable[np.ndarray], overlap: int, texts: list[str]) -> tuple[int, int]:
    """(characters, words) of the targets `score_windows` scores in stored windows;
    `texts` (from `piece_texts`) give each id's text."""
    characters = words = 0
    for batch in batches:
        for row in np.asarray(batch).tolist():
            segment = "".join(texts[i] for i in row[overlap + 1 :])
            before = texts[row[overlap]]  # the input just before the first scored target
            characters += len(segment)
            words += count_words(segment, after_space=not before or before[-1].isspace())
    return characters, words


def score_windows(model: GPT, batches: Iterable[np.ndarray], overlap: int, texts: list[str] | None, counts: tuple[int, int] | None = None) -> Totals:
    """Totals over stored windows, arrays (B, window_size + 1), scoring each window's
    targets after its first `overlap` (see the module's docstring); `texts` (from
    `piece_texts`) give the scored targets' characters and words, unless `counts` holds
    them already (`text_counts` of the same batches: training's validation counts its
    kept batches once)."""
    totals = Totals()
    for batch in batches:
        ids = torch.from_numpy(np.asarray(batch, dtype=np.int64))
        inputs, targets = ids[:, :-1], ids[:, 1:]  # (B, window_size)
        scored = torch.zeros_like(targets, dtype=torch.bool)
        scored[:, overlap:] = True
        totals.add(*score_batch(model, inputs, targets, scored))
        totals.windows += len(batch)
        if counts is None:
            characters, words = text_counts([batch], overlap, texts)
            totals.characters, totals.words = totals.characters + characters, totals.words + words
    if counts is not None:
        totals.characters, totals.words = counts
    return totals


def score_split(
    model: GPT,
    tokenizer_bytes: bytes,
    output_url: str,
    split: str,
    overlap: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    batch_size: int = 8,
    max_batches: int = 0,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    batches: Iterable[np.ndarray] | None = None,
    counts: tuple[int, int] | None = None,
) -> Totals:
    """Totals over a dataset split's windows: this rank's shard (at most `max_batches`
    batches of it; 0: all), summed over the ranks by `reduce_sum` (an allreduce), so
    that every rank returns the whole split's totals. `evaluate --split` and training's
    validation both score with this function, so their figures mean the same."""
    texts = piece_texts(tokenizer.load(tokenizer_bytes)) if counts is None else None
    model.eval()
    # `batches`: the shard's batches already read (training's validation keeps them, and
    # their `counts` of characters and words)
    with nullcontext(batches) if batches is not None else shard_batches(output_url, split, rank, world_size, batch_size) as read:
        totals = score_windows(model, itertools.islice(read, max_batches or None), overlap, texts, counts)
    if reduce_sum is not None:
        summed = reduce_sum(torch.tensor([totals.nll, totals.correct, totals.tokens, totals.characters, totals.words, totals.windows], dtype=torch.float64))
        nll, correct, tokens, characters, words, windows = summed.tolist()
        totals = Totals(nll, int(correct), int(tokens), int(characters), int(words), int(windows))
    return totals


def shard_batches(output_url: str, split: str, rank: int, world_size: int, batch_size: int):
    """This rank's batches of a split, once, in the order scoring reads them (a context
    manager around dataset.window_batches)."""
    return dataset.window_batches(output_url, split, rank, world_size, batch_size, num_epochs=1, seed=0, shuffle=False)


def evaluate_split(model: GPT, tokenizer_bytes: bytes, output_url: str, split: str = "val", batch_size: int = 8) -> dict:
    """Scores of a dataset split under output_url, read as rank 0 of a world of 1."""
    manifest = read_manifest(output_url)
    if manifest.tokenizer.sha256 != tokenizer.fingerprint(tokenizer_bytes):
        raise UserError(
            f"the dataset at {output_url} was encoded with another tokenizer than the checkpoint's: pass --output-url of the run that trained this checkpoint"
        )
    if manifest.window_size > model.config.block_size:
        raise UserError(
            f"the dataset's windows ({manifest.window_size} ids) are longer than the model's block_size ({model.config.block_size}): use that run's dataset"
        )
    overlap = manifest.overlap_of(split)
    totals = score_split(model, tokenizer_bytes, output_url, split, overlap, batch_size=batch_size)
    if totals.tokens == 0:
        raise UserError("the validation split holds no window: preprocess a larger corpus or raise data.val_fraction")
    return summarize(totals) | {
        "stride": manifest.window_size - overlap,
        "context": manifest.window_size,
        "split": split,
        "dataset": storage.normalize(output_url),
    }


_STEP_DIR = re.compile(r"[/\\]checkpoints[/\\]step-\d{8}$")


def run_of_checkpoint(checkpoint_url: str) -> str | None:
    """The output_url a checkpoints/step-XXXXXXXX folder belongs to, if it is one."""
    url = storage.normalize(checkpoint_url)
    match = _STEP_DIR.search(url)
    return url[: match.start()] if match else None

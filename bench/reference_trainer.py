"""The quality bench's reference: nanoGPT's own way of training its CPU example, as one
plain process, no pipeline.

    .venv/bin/python bench/reference_trainer.py --train train.txt --score test.txt --seconds 90 [--seed 101] [--json PATH]

nanoGPT's `config/train_shakespeare_char.py` with its CPU settings (4 layers, 4 heads,
width 128, context 64, batch 12, dropout 0, AdamW at 1e-3 with betas (0.9, 0.99),
weight decay 0.1, clipping at 1.0, 100 warm-up steps, cosine decay to 1e-4), on
characters: the vocabulary is the training text's characters (plus one for a character
it never saw, and id 0, which the model reserves for padding), `get_batch` draws 12 random offsets into the token array, and every core
computes for the one process (torch's default threads). Its schedule decays over the
wall-clock budget instead of nanoGPT's fixed 2000 iterations, so that it ends where the
budget does, as the product's recipe does. The model is this package's GPT with learned
positions, which is nanoGPT's architecture.

Scores the `--score` text in nats per character the way `horovod-llm evaluate` does:
windows of the context every 16 characters, each scoring its targets after the first 48,
so every character once, with at least 48 characters before it.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from common import report, write_result

CONFIG = {
    "n_layer": 4,
    "n_head": 4,
    "n_embd": 128,
    "block_size": 64,
    "batch_size": 12,
    "dropout": 0.0,
    "learning_rate": 1e-3,
    "min_lr": 1e-4,
    "warmup_iters": 100,
    "beta2": 0.99,
    "weight_decay": 0.1,
    "grad_clip": 1.0,
}
SCORE_STRIDE = 16  # as the quality bench's evaluation: 48 characters of context at least


def encode(text: str, vocabulary: dict[str, int]):
    import torch

    unknown = len(vocabulary) + 1
    return torch.tensor([vocabulary.get(ch, unknown) for ch in text], dtype=torch.long)


def learning_rate(step: int, elapsed_fraction: float) -> float:
    """nanoGPT's schedule: linear warm-up, then cosine decay to min_lr, here over the budget."""
    c = CONFIG
    if step < c["warmup_iters"]:
        return c["learning_rate"] * (step + 1) / (c["warmup_iters"] + 1)
    ratio = min(max(elapsed_fraction, 0.0), 1.0)
    return c["min_lr"] + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (c["learning_rate"] - c["min_lr"])


def train(train_text: str, seconds: float, seed: int, max_steps: int | None = None):
    """(model, vocabulary, steps, tokens/s) after `seconds` of nanoGPT's loop (or
    `max_steps` steps, if fewer: the tests' fixed amount of work on a busy machine)."""
    import torch

    from horovod_llm.model import GPT, GPTConfig

    c = CONFIG
    torch.manual_seed(seed)
    # id 0 stays unused: the model takes it for padding and gives it no loss
    vocabulary = {ch: i for i, ch in enumerate(sorted(set(train_text)), start=1)}
    data = encode(train_text, vocabulary)
    config = GPTConfig(
        vocab_size=len(vocabulary) + 2, block_size=c["block_size"], n_layer=c["n_layer"], n_head=c["n_head"], n_embd=c["n_embd"],
        dropout=c["dropout"], positional="learned",
    )  # fmt: skip
    model = GPT(config)
    optimizer = torch.optim.AdamW(model.param_groups(c["weight_decay"]), lr=c["learning_rate"], betas=(0.9, c["beta2"]))
    generator = torch.Generator().manual_seed(seed)

    def get_batch():
        starts = torch.randint(len(data) - c["block_size"] - 1, (c["batch_size"],), generator=generator)
        return torch.stack([data[i : i + c["block_size"] + 1] for i in starts.tolist()])

    model.train()
    step, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds and (max_steps is None or step < max_steps):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, elapsed / seconds)
        ids = get_batch()
        _, loss = model(ids[:, :-1], ids[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), c["grad_clip"])
        optimizer.step()
        step += 1
    elapsed = time.perf_counter() - started
    return model, vocabulary, step, step * c["batch_size"] * c["block_size"] / elapsed


def nats_per_character(model, vocabulary: dict[str, int], text: str) -> float:
    nll, counted = scored_characters(model, vocabulary, text)
    return nll / counted


def scored_characters(model, vocabulary: dict[str, int], text: str) -> tuple[float, int]:
    """(summed NLL, characters scored) over `text`: every character after the first once,
    with at least block_size - SCORE_STRIDE characters of context (the first window
    scores all of its own)."""
    import torch
    import torch.nn.functional as F

    block = model.config.block_size
    ids = encode(text, vocabulary)
    if len(ids) < 2:
        return 0.0, 0
    # window starts: 0, 16, 32... up to the first window that reaches the text's end
    starts = [0]
    while starts[-1] + block + 1 < len(ids):
        starts.append(starts[-1] + SCORE_STRIDE)
    model.eval()
    total, counted = 0.0, 0
    with torch.no_grad():
        for first in range(0, len(starts), 64):  # 64 windows per forward pass
            chunk = starts[first : first + 64]
            windows = [ids[start : start + block + 1] for start in chunk]
            width = max(len(w) for w in windows)
            batch = torch.zeros(len(windows), width, dtype=torch.long)  # 0: padding, no loss
            for row, window in enumerate(windows):
                batch[row, : len(window)] = window
            logits, _ = model(batch[:, :-1])
            for row, (start, window) in enumerate(zip(chunk, windows, strict=True)):
                targets = window[1:]
                skip = 0 if start == 0 else block - SCORE_STRIDE
                nll = F.cross_entropy(logits[row, skip : len(targets)], targets[skip:], reduction="sum")
                total, counted = total + float(nll), counted + len(targets) - skip
    return total, counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, type=Path)
    parser.add_argument("--score", required=True, type=Path)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument("--json")
    args = parser.parse_args()
    started = time.perf_counter()
    model, vocabulary, steps, tokens_per_s = train(args.train.read_text(encoding="utf-8"), args.seconds, args.seed)
    score = nats_per_character(model, vocabulary, args.score.read_text(encoding="utf-8"))
    result = {
        "nats_per_character": score,
        "steps": steps,
        "tokens_per_s": tokens_per_s,
        "parameters": model.num_parameters(),
        "vocabulary": len(vocabulary) + 2,
        "config": CONFIG,
        "seed": args.seed,
        "budget_s": args.seconds,
        "run_wall_s": time.perf_counter() - started,
    }
    report(f"reference: {score:.3f} nats/char after {steps} steps ({tokens_per_s:.0f} tokens/s, {args.seconds:g} s)")
    write_result(args.json, result)


if __name__ == "__main__":
    main()

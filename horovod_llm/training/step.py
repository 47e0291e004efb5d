"""What a rank does at each step: the distributed optimizer, the optimizer step over
micro-batches, the sums behind the logged statistics, and validation.

The collectives (comm.py: Horovod or torch.distributed) and the reduction are
arguments, so that the model and the data stay free of any launcher.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from horovod_llm.config import TrainConfig
from horovod_llm.data import tokenizer
from horovod_llm.inference.evaluate import piece_texts, score_split, shard_batches, summarize, text_counts
from horovod_llm.model import GPT
from horovod_llm.training.metrics import batch_metrics
from horovod_llm.training.precision import Precision


def distributed_optimizer(model: GPT, train: TrainConfig, learning_rate: float, comm):
    """AdamW with weight-decay groups, averaging gradients over the ranks of `comm`
    (a comm.Collectives) with the configured options."""
    optimizer = torch.optim.AdamW(model.param_groups(train.weight_decay), lr=learning_rate, betas=(0.9, 0.95))
    return comm.distributed_optimizer(optimizer, model, train)


@dataclass
class StepResult:
    loss: float  # mean over the step's micro-batches
    correct: float
    tokens: float
    grad_norm: float  # of the averaged gradient, before clipping
    sync_seconds: float  # waiting for the allreduce after the last backward pass


def train_step(
    model: GPT, optimizer, micro_batches: list[torch.Tensor], grad_clip: float, precision: Precision | None = None, scaler: torch.amp.GradScaler | None = None
) -> StepResult:
    """One optimizer step over `backward_passes_per_step` micro-batches of (B, T+1) ids,
    the forward passes under `precision`'s autocast (fp32 by default); with fp16, the
    loss scaled by `scaler` and the step skipped where the scaled gradient overflowed."""
    precision = precision or Precision("fp32")
    scaler = scaler or precision.grad_scaler()
    optimizer.zero_grad()
    loss_sum = correct = tokens = 0.0
    for ids in micro_batches:
        inputs, targets = ids[:, :-1], ids[:, 1:]
        with precision.autocast():
            logits, loss = model(inputs, targets)
        # The optimizer averages over ranks; dividing by the micro-batch count averages over them.
        scaler.scale(loss / len(micro_batches)).backward()
        loss_sum += loss.item()
        c, t = batch_metrics(logits.detach(), targets)
        correct, tokens = correct + c, tokens + t
    # Finish the allreduce before clipping, so every rank clips the same averaged
    # gradient, then step without a second synchronisation. The ranks unscale the same
    # averaged gradient, so they agree on an overflow and skip the same steps.
    sync_started = time.perf_counter()
    optimizer.synchronize()
    if micro_batches[0].is_cuda:
        torch.cuda.synchronize()  # NCCL only queued the reduction: time its end, not its launch
    sync_seconds = time.perf_counter() - sync_started
    scaler.unscale_(optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf")))
    with optimizer.skip_synchronize():
        scaler.step(optimizer)
    scaler.update()
    return StepResult(loss_sum / len(micro_batches), correct, tokens, grad_norm, sync_seconds)


class Interval:
    """Sums over the steps between two log lines, reduced across ranks when logged."""

    def __init__(self):
        # loss*tokens, correct, tokens, steps, seconds, sync seconds, load seconds, page faults
        self.sums = torch.zeros(8, dtype=torch.float64)

    def add(self, result: StepResult, seconds: float, load_seconds: float = 0.0, page_faults: int = 0) -> None:
        values = [result.loss * result.tokens, result.correct, result.tokens, 1.0, seconds, result.sync_seconds, load_seconds, page_faults]
        self.sums += torch.tensor(values, dtype=torch.float64)

    def reset(self) -> None:
        self.sums.zero_()


@torch.no_grad()
def validate(
    model: GPT,
    tokenizer_bytes: bytes,
    output_url: str,
    overlap: int,
    rank: int,
    world_size: int,
    batch_size: int,
    max_batches: int,
    reduce_sum: Callable[[torch.Tensor], torch.Tensor],
    shard: ValidationShard | None = None,
) -> dict:
    """Validation figures over every rank's shard of the validation split, scored as
    `horovod-llm evaluate --split val` scores it (`evaluate.score_split`): each window's
    targets after its first `overlap` (the validation split's: `Manifest.overlap_of`),
    so every token once, with context.

    Each rank reads its own shard once (shards may differ in size); only the final
    sums cross ranks, so an uneven shard cannot stall a collective. `shard`: the
    shard's batches already read and their text counted (validation_shard), instead of
    reading and counting them again.
    """
    totals = score_split(
        model, tokenizer_bytes, output_url, "val", overlap,
        rank=rank, world_size=world_size, batch_size=batch_size, max_batches=max_batches, reduce_sum=reduce_sum,
        batches=shard.batches if shard else None, counts=shard.counts if shard else None,
    )  # fmt: skip
    model.train()
    if totals.tokens == 0:
        nan = float("nan")
        return {"val_loss": nan, "val_perplexity": nan, "val_accuracy": nan, "val_nats_per_character": nan, "val_tokens": 0, "val_windows": 0}
    figures = summarize(totals)
    return {
        "val_loss": figures["nll_per_token"],
        "val_perplexity": math.exp(min(figures["nll_per_token"], 50.0)),
        "val_accuracy": figures["token_accuracy"],
        "val_nats_per_character": figures["nats_per_character"],
        "val_tokens": totals.tokens,
        # at most train.eval_max_batches batches per rank: the whole split only when it is
        # that small (the run's report says which; `evaluate --split val` scores it all)
        "val_windows": totals.windows,
    }


@dataclass
class ValidationShard:
    """This rank's validation batches, kept for every evaluation of a loop entry, and
    the characters and words of their scored targets (for nats per character), which
    never change between evaluations."""

    batches: list
    counts: tuple[int, int]


def validation_shard(
    output_url: str, rank: int, world_size: int, batch_size: int, max_batches: int, overlap: int, tokenizer_bytes: bytes
) -> ValidationShard | None:
    """This rank's validation batches, read and counted once, when train.eval_max_batches
    bounds them (a few MB at most), so that an evaluation neither opens the Parquet split
    and starts a reader again nor re-counts the same text; None (read at each
    evaluation) when it does not bound them."""
    if not max_batches:
        return None
    with shard_batches(output_url, "val", rank, world_size, batch_size) as batches:
        kept = list(itertools.islice(batches, max_batches))
    return ValidationShard(kept, text_counts(kept, overlap, piece_texts(tokenizer.load(tokenizer_bytes))))

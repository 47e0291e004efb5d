"""The training worker: the one entry point of a rank, whatever started it.

`train_worker(config_values)` runs under `horovod.spark.run` (one Spark task per rank),
under `horovodrun` (via `python -m horovod_llm.worker`) and in-process for a single
rank. It returns a small dict; weights and statistics go to storage.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import resource
import sys
import time

import numpy as np
import torch

from horovod_llm import checkpoint, dataset, layout, storage
from horovod_llm.config import RunConfig, from_dict
from horovod_llm.log import setup_logging
from horovod_llm.model import GPT, GPTConfig
from horovod_llm.schedule import learning_rate_at
from horovod_llm.stats import NullStats, StatsWriter
from horovod_llm.tokenizer import PAD_ID

log = logging.getLogger(__name__)


def model_config(config: RunConfig, manifest: dict) -> GPTConfig:
    m = config.model
    return GPTConfig(
        vocab_size=manifest["tokenizer"]["vocab_size"],
        block_size=manifest["window_size"],
        n_layer=m.n_layer,
        n_head=m.n_head,
        n_embd=m.n_embd,
        dropout=m.dropout,
        bias=m.bias,
        positional=m.positional,
        tie_weights=m.tie_weights,
        pad_id=PAD_ID,
    )


def threads_for_rank(configured: int, local_size: int) -> int:
    """Torch threads per rank: as configured, else this host's cores shared by its ranks
    (more would oversubscribe the cores: 2 ranks x N threads on N cores)."""
    if configured > 0:
        return configured
    return max(1, (os.cpu_count() or 1) // max(local_size, 1))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def batch_metrics(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(correct predictions, counted tokens) over the non-PAD targets of a batch."""
    mask = targets != PAD_ID
    correct = ((logits.argmax(dim=-1) == targets) & mask).sum()
    return float(correct), float(mask.sum())


@torch.no_grad()
def evaluate(model: GPT, output_url: str, rank: int, world_size: int, batch_size: int, max_batches: int, allreduce_sum) -> dict:
    """Validation loss, perplexity and token accuracy over every rank's shard.

    Each rank reads its own shard once (shards may differ in size); only the final
    sums cross ranks, so an uneven shard cannot stall a collective.
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # summed loss (nats), correct, tokens
    with dataset.window_batches(output_url, "val", rank, world_size, batch_size, num_epochs=1, seed=0, shuffle=False) as batches:
        for index, batch in enumerate(batches):
            if max_batches and index >= max_batches:
                break
            ids = torch.from_numpy(batch)
            logits, loss = model(ids[:, :-1], ids[:, 1:])
            correct, tokens = batch_metrics(logits, ids[:, 1:])
            sums += torch.tensor([float(loss) * tokens, correct, tokens], dtype=torch.float64)
    model.train()
    loss_sum, correct, tokens = allreduce_sum(sums).tolist()
    if tokens == 0:
        return {"val_loss": float("nan"), "val_perplexity": float("nan"), "val_accuracy": float("nan"), "val_tokens": 0}
    val_loss = loss_sum / tokens
    return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0)), "val_accuracy": correct / tokens, "val_tokens": int(tokens)}


def restore_latest(output_url: str, model: GPT, optimizer, resume: bool) -> int:
    """Load the latest complete checkpoint into model and optimizer; its step, or 0."""
    latest = checkpoint.checkpoint_to_resume(output_url, resume)
    if latest is None:
        return 0
    step, url = latest
    _, model_state, optimizer_state = checkpoint.load_training_state(url, dataclasses.asdict(model.config))
    model.load_state_dict(model_state)
    if optimizer_state is not None:
        optimizer.load_state_dict(optimizer_state)
    log.info("resuming from %s (step %d)", url, step)
    return step


def _format_eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


def train_worker(config_values: dict) -> dict:
    """Train on this rank's shard; rank 0 writes checkpoints and statistics."""
    import horovod.torch as hvd

    config = from_dict(config_values)
    # A rank's stdout may be the user's terminal (Spark local mode): it only logs, to
    # stderr, so that stdout carries nothing but generated text.
    sys.stdout = sys.stderr
    hvd.init()  # Horovod: initialise the ranks
    rank, world_size = hvd.rank(), hvd.size()
    is_main = rank == 0
    setup_logging(config.log_level, rank)
    tc = config.train
    threads = threads_for_rank(tc.threads_per_rank, hvd.local_size())
    torch.set_num_threads(threads)  # Horovod: pin each rank to its share of the cores
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed + rank)

    out = config.output_url
    manifest = dataset.read_manifest(out)
    tokenizer_bytes = storage.read_bytes(layout.tokenizer_url(out))
    model = GPT(model_config(config, manifest))
    # Horovod: optionally scale the learning rate with the number of ranks.
    max_lr = tc.learning_rate * (world_size if tc.scale_lr_by_ranks else 1)
    min_lr = tc.min_lr * (world_size if tc.scale_lr_by_ranks else 1)
    optimizer = torch.optim.AdamW(model.param_groups(tc.weight_decay), lr=max_lr, betas=(0.9, 0.95))
    # Horovod: rank 0 finds the checkpoint to resume from and broadcasts its step; the
    # weights and optimizer state it loads reach the other ranks by the broadcasts below.
    resume_step = restore_latest(out, model, optimizer, tc.resume) if is_main else 0
    resume_step = hvd.broadcast_object(resume_step, root_rank=0, name="resume_step")
    # Horovod: every rank starts from rank 0's weights and optimizer state.
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    # Horovod: average gradients across ranks with ring-allreduce.
    optimizer = hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())

    def allreduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        return hvd.allreduce(tensor, op=hvd.Sum, name="metrics_sum")

    steps_per_epoch = dataset.steps_per_epoch(manifest["splits"]["train"]["windows"], tc.batch_size, world_size)
    total_steps = tc.max_steps or tc.epochs * steps_per_epoch
    tokens_per_step = tc.batch_size * manifest["window_size"] * world_size
    stats = StatsWriter(out) if is_main else NullStats()
    stats.resume(resume_step)
    if resume_step >= total_steps:
        if is_main:
            log.info("the checkpoint at step %d already completes the %d steps asked for: nothing to train", resume_step, total_steps)
        hvd.barrier()
        summary_url = storage.join(layout.stats_url(out), "summary.json")
        return {"rank": rank, "steps": resume_step, **({"summary": storage.read_json(summary_url)} if is_main and storage.exists(summary_url) else {})}
    if is_main:
        log.info(
            "training %.2fM parameters on %d rank(s) x %d thread(s): %d steps (%d per epoch), %d tokens per step",
            model.num_parameters() / 1e6,
            world_size,
            threads,
            total_steps,
            steps_per_epoch,
            tokens_per_step,
        )

    started = time.perf_counter()
    epoch_started = started
    interval = torch.zeros(4, dtype=torch.float64)  # summed loss, correct, tokens, steps
    epoch_loss = torch.zeros(2, dtype=torch.float64)  # summed loss, steps
    interval_seconds = 0.0
    last_eval: dict = {}
    checkpoint_url = None
    model.train()
    # A resumed run reshuffles with another seed rather than replaying the data order.
    data_seed = tc.seed + resume_step
    with dataset.window_batches(out, "train", rank, world_size, tc.batch_size, num_epochs=None, seed=data_seed, shuffle=True) as batches:
        for step in range(resume_step + 1, total_steps + 1):
            epoch = (step - 1) // steps_per_epoch
            lr = learning_rate_at(step, max_lr=max_lr, min_lr=min_lr, warmup_steps=tc.warmup_steps, total_steps=total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_started = time.perf_counter()
            ids = torch.from_numpy(next(batches))
            inputs, targets = ids[:, :-1], ids[:, 1:]
            logits, loss = model(inputs, targets)
            optimizer.zero_grad()
            loss.backward()
            # Horovod: finish the allreduce before clipping, so every rank clips the same
            # averaged gradient, then step without a second synchronisation.
            optimizer.synchronize()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf")))
            with optimizer.skip_synchronize():
                optimizer.step()
            loss_value = loss.item()
            correct, tokens = batch_metrics(logits.detach(), targets)
            interval += torch.tensor([loss_value * tokens, correct, tokens, 1.0], dtype=torch.float64)
            epoch_loss += torch.tensor([loss_value, 1.0], dtype=torch.float64)
            # Step time covers loading, compute and allreduce, not evaluation or checkpoints.
            interval_seconds += time.perf_counter() - step_started

            end_of_epoch = step % steps_per_epoch == 0 or step == total_steps
            if step % tc.log_interval == 0 or end_of_epoch:
                totals = allreduce_sum(interval)
                # The slowest rank sets the pace of a synchronous step.
                slowest = hvd.allreduce(torch.tensor([interval_seconds, peak_rss_mb()]), op=hvd.Max, name="max_time_rss")
                elapsed, rss = float(slowest[0]), float(slowest[1])
                steps_done = float(totals[3]) / world_size
                record = {
                    "step": step,
                    "epoch": epoch,
                    "loss": float(totals[0] / totals[2]),
                    "accuracy": float(totals[1] / totals[2]),
                    "grad_norm": grad_norm,
                    "lr": lr,
                    "step_time_s": elapsed / steps_done,
                    "tokens_per_s": tokens_per_step * steps_done / elapsed,
                    "peak_rss_mb": rss,
                }
                stats.log_step(record)
                if is_main:
                    eta = (time.perf_counter() - started) / (step - resume_step) * (total_steps - step)
                    log.info(
                        "step %d/%d | epoch %d | loss %.4f | acc %.3f | grad %.2f | lr %.2e | %.0f tok/s | eta %s",
                        step,
                        total_steps,
                        epoch,
                        record["loss"],
                        record["accuracy"],
                        grad_norm,
                        lr,
                        record["tokens_per_s"],
                        _format_eta(eta),
                    )
                interval.zero_()
                interval_seconds = 0.0

            if (tc.eval_interval and step % tc.eval_interval == 0) or end_of_epoch:
                last_eval = evaluate(model, out, rank, world_size, tc.batch_size, tc.eval_max_batches, allreduce_sum)
                if is_main:
                    log.info(
                        "step %d | val loss %.4f | val ppl %.1f | val acc %.3f",
                        step,
                        last_eval["val_loss"],
                        last_eval["val_perplexity"],
                        last_eval["val_accuracy"],
                    )
            if end_of_epoch:
                epoch_totals = allreduce_sum(epoch_loss)
                stats.log_epoch(
                    {
                        "epoch": epoch,
                        "step": step,
                        "seconds": time.perf_counter() - epoch_started,
                        "train_loss": float(epoch_totals[0] / epoch_totals[1]),
                        **last_eval,
                    }
                )
                epoch_loss.zero_()
                epoch_started = time.perf_counter()

            if is_main and ((tc.checkpoint_interval and step % tc.checkpoint_interval == 0) or step == total_steps):
                checkpoint_url = checkpoint.save_checkpoint(
                    out, step, model, optimizer, config, tokenizer_bytes, {"epoch": epoch, "metrics": last_eval, "dataset": manifest["fingerprint"]}
                )
                checkpoint.prune_checkpoints(out, tc.keep_last)
                log.info("checkpoint written: %s", checkpoint_url)

    total_seconds = time.perf_counter() - started
    summary = {
        "steps": total_steps,
        "epochs": math.ceil(total_steps / steps_per_epoch),
        "steps_per_epoch": steps_per_epoch,
        "ranks": world_size,
        "threads_per_rank": threads,
        "global_batch_windows": tc.batch_size * world_size,
        "tokens_per_step": tokens_per_step,
        "total_seconds": total_seconds,
        "tokens_per_s": tokens_per_step * total_steps / total_seconds,
        "parameters": model.num_parameters(),
        "final": last_eval,
        "checkpoint_url": checkpoint_url,
    }
    stats.write_summary(summary)
    hvd.barrier()  # Horovod: no rank leaves while rank 0 still writes
    return {"rank": rank, "steps": total_steps, **({"summary": summary} if is_main else {})}

"""Training statistics under {output_url}/stats: steps.jsonl (per logged step),
evals.jsonl (per evaluation), epochs.jsonl (per epoch) and summary.json; and the other
outputs of a finished run (model.zip, the curves).

Only the logging rank writes; the others get a `NullStats`, which keeps `if rank == 0`
out of the training loop. Files are rewritten whole on each flush because object
stores cannot append; they stay small (one line per logged step).
"""

from __future__ import annotations

import json
import math
import time

import numpy as np

from horovod_llm import layout, storage
from horovod_llm.training.metrics import model_flops_utilisation


class NullStats:
    def resume(self, step: int) -> None:
        pass

    def log_step(self, record: dict) -> None:
        pass

    def log_epoch(self, record: dict) -> None:
        pass

    def log_eval(self, record: dict) -> None:
        pass

    def write_summary(self, summary: dict) -> None:
        pass

    def flush(self) -> None:
        pass


class StatsWriter(NullStats):
    def __init__(self, output_url: str):
        self.root = layout.stats_url(output_url)
        self.steps: list[dict] = []
        self.epochs: list[dict] = []
        self.evals: list[dict] = []

    def resume(self, step: int) -> None:
        """Keep the records of an earlier run up to `step`, the checkpoint resumed from."""
        for name, records in self._files():
            url = storage.join(self.root, name)
            if storage.exists(url):
                records[:] = [r for r in map(json.loads, storage.read_text(url).splitlines()) if r["step"] <= step]

    def log_step(self, record: dict) -> None:
        self.steps.append(record)

    def log_epoch(self, record: dict) -> None:
        self.epochs.append(record)
        self.flush()

    def log_eval(self, record: dict) -> None:
        self.evals.append(record)

    def _files(self):
        return (("steps.jsonl", self.steps), ("epochs.jsonl", self.epochs), ("evals.jsonl", self.evals))

    def flush(self) -> None:
        for name, records in self._files():
            storage.write_text(storage.join(self.root, name), "".join(json.dumps(r) + "\n" for r in records))

    def write_summary(self, summary: dict) -> None:
        self.flush()
        storage.write_json(storage.join(self.root, "summary.json"), summary)


def step_record(
    step: int,
    epoch: int,
    lr: float,
    grad_norm: float,
    sums: list[float],
    elapsed: float,
    rss: float,
    trained: float,
    world_size: int,
    tokens_per_step: int,
    flops_per_token: float,
    peak_flops: float,
) -> dict:
    """A line of steps.jsonl: the interval's sums over the ranks (step.Interval: loss x
    tokens, correct, tokens, steps, seconds, sync seconds, load seconds), and the slowest
    rank's seconds, peak RSS and trained seconds."""
    loss_x_tokens, correct, tokens, steps_done, _, sync, load = sums
    steps_done /= world_size
    tokens_per_s = tokens_per_step * steps_done / elapsed
    return {
        "step": step,
        "epoch": epoch,
        "loss": loss_x_tokens / tokens,
        "accuracy": correct / tokens,
        "grad_norm": grad_norm,
        "lr": lr,
        "step_time_s": elapsed / steps_done,
        "tokens_per_s": tokens_per_s,
        # model FLOP/s, and its share of the fp32 matmul peak
        "model_flops_per_s": flops_per_token * tokens_per_s,
        "mfu": model_flops_utilisation(flops_per_token, tokens_per_s, peak_flops),
        # mean over ranks of the time spent waiting for gradients to be reduced
        "allreduce_share": sync / world_size / elapsed,
        # mean over ranks of the time spent reading the step's batches
        "load_share": load / world_size / elapsed,
        "peak_rss_mb": rss,
        "ranks": world_size,
        "trained_seconds": trained,
        "time": time.time(),  # rank 0's wall clock (Unix seconds)
    }


def epoch_record(epoch: int, step: int, seconds: float, loss_totals, last_eval: dict) -> dict:
    """A line of epochs.jsonl: the epoch's mean training loss over the ranks' steps
    (`loss_totals`: summed loss, steps), and its last evaluation."""
    return {"epoch": epoch, "step": step, "seconds": seconds, "train_loss": float(loss_totals[0] / loss_totals[1]), **last_eval}


def summary_record(
    *,
    steps: int,
    total_steps: int | None,
    trained_seconds: float,
    budget_seconds: float,
    resumed_from_step: int,
    steps_per_epoch: int,
    ranks: int,
    threads_per_rank: int,
    launch: dict,
    placement: list,
    collectives: dict,
    global_batch_windows: int,
    tokens_per_step: int,
    total_seconds: float,
    steps_run: int,
    peak_flops: float,
    peak_source: str,
    precision: dict,
    device: str,
    mfu_values: list[float],
    parameters: int,
    flops_per_token: float,
    final: dict,
    checkpoint_url: str | None,
    timeline: dict,
    loop_seconds: dict,
) -> dict:
    """summary.json: how the run ended, where and how it ran, and its throughput."""
    return {
        "steps": steps,
        "stopped_by": "steps" if steps == total_steps else "budget",
        "trained_seconds": trained_seconds,
        "budget_seconds": budget_seconds,
        "resumed_from_step": resumed_from_step,
        "epochs": math.ceil(steps / steps_per_epoch),
        "steps_per_epoch": steps_per_epoch,
        "ranks": ranks,
        "threads_per_rank": threads_per_rank,
        "launch": launch,
        "placement": placement,
        "backend": collectives["backend"],
        # the reduction's settings (Horovod's, which torch.distributed follows but for the cycle time)
        "collectives": collectives,
        "global_batch_windows": global_batch_windows,
        "tokens_per_step": tokens_per_step,
        "total_seconds": total_seconds,
        "tokens_per_s": tokens_per_step * steps_run / total_seconds,
        "peak_flops": peak_flops,
        "peak_source": peak_source,
        # the precision trained in (the peak above is that precision's), and how it was chosen
        "precision": precision,
        "device": device,
        "model_flops_per_s": flops_per_token * tokens_per_step * steps_run / total_seconds,
        "mfu_mean": float(np.nanmean(mfu_values)) if mfu_values else float("nan"),
        "parameters": parameters,
        "flops_per_token": flops_per_token,
        "final": final,
        "checkpoint_url": checkpoint_url,
        "timeline": timeline,
        # where rank 0's training-loop time went (loop.LOOP_PHASES, "other", "total")
        "loop_seconds": loop_seconds,
    }


def write_run_outputs(stats: StatsWriter, summary: dict, checkpoint_url: str, output_url: str) -> None:
    """The end of a run (rank 0): the final model as one self-contained file (weights,
    config, tokenizer), the summary with the statistics, TensorBoard events and plots."""
    from horovod_llm import checkpoint
    from horovod_llm.training.plots import write_curves

    summary["model_zip_url"] = storage.join(output_url, checkpoint.MODEL_ZIP)
    checkpoint.export_model_zip(checkpoint_url, summary["model_zip_url"])
    stats.write_summary(summary)
    write_curves(layout.stats_url(output_url), stats.steps, stats.evals)

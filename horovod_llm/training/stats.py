"""Training statistics under {output_url}/stats: steps.jsonl (per logged step),
evals.jsonl (per evaluation), epochs.jsonl (per epoch), TensorBoard events
(events.py) and summary.json; and the other outputs of a finished run (model.zip, the
plots).

Only the logging rank writes; the others get a `NullStats`, which keeps `if rank == 0`
out of the training loop. Records are written as they are logged, where the storage
allows: on local disk each JSONL line is appended and the events flushed at once, so a
killed run keeps both up to its last log line. An object store cannot append: on S3 the
JSONL files are rewritten whole and the event file uploaded at each `sync`
(checkpoints, elastic commits, the end), which costs a PUT per file of the run's records
so far (README, "Watching a run", gives the sizes).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np

from horovod_llm import layout, storage
from horovod_llm.training.events import EPOCH_SCALARS, EVAL_SCALARS, STEP_SCALARS, EventsWriter
from horovod_llm.training.metrics import model_flops_utilisation
from horovod_llm.training.tracking import NullTracker

log = logging.getLogger(__name__)

STATS_FILES = ("steps.jsonl", "epochs.jsonl", "evals.jsonl")


class NullStats:
    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def log_step(self, record: dict) -> None:
        pass

    def log_epoch(self, record: dict) -> None:
        pass

    def log_eval(self, record: dict) -> None:
        pass

    def sync(self) -> None:
        pass

    def write_summary(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass


def read_records(url: str) -> list[dict]:
    """A JSONL file's records; a last line cut short (a machine that went down while it
    was written) is left out."""
    if not storage.exists(url):
        return []
    records = []
    lines = storage.read_text(url).splitlines()
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i < len(lines) - 1:
                raise
            log.warning("%s: its last line was cut short; left out", url)
    return records


class StatsWriter(NullStats):
    """Rank 0's statistics from `step` on: the records an earlier run logged up to
    `step` (the checkpoint or commit it resumes from) are kept, the later ones dropped,
    since this entry trains those steps again."""

    def __init__(self, output_url: str, step: int, tracker: NullTracker | None = None):
        self.root = layout.stats_url(output_url)
        self.tracker = tracker or NullTracker()
        self.append = not storage.is_remote(self.root)
        self.records: dict[str, list[dict]] = {}
        for name in STATS_FILES:
            self.records[name] = [r for r in read_records(storage.join(self.root, name)) if r["step"] <= step]
        self._rewrite()  # once: what an earlier run logged after `step` goes
        self.events = EventsWriter(self.root, first_step=step + 1)

    @property
    def steps(self) -> list[dict]:
        return self.records["steps.jsonl"]

    @property
    def evals(self) -> list[dict]:
        return self.records["evals.jsonl"]

    def log_step(self, record: dict) -> None:
        self._log("steps.jsonl", record, STEP_SCALARS)

    def log_epoch(self, record: dict) -> None:
        self._log("epochs.jsonl", record, EPOCH_SCALARS)

    def log_eval(self, record: dict) -> None:
        self._log("evals.jsonl", record, EVAL_SCALARS)

    def _log(self, name: str, record: dict, scalars: dict[str, str]) -> None:
        self.records[name].append(record)
        self.events.add(record, scalars)
        self.tracker.log(record, scalars)  # queued: never waits for the server
        if self.append:
            append_line(storage.join(self.root, name), json.dumps(record) + "\n")
            self.events.flush()

    def _rewrite(self) -> None:
        for name, records in self.records.items():
            storage.write_text(storage.join(self.root, name), "".join(json.dumps(r) + "\n" for r in records))

    def sync(self) -> None:
        """Everything logged so far, where readers find it: on S3 the JSONL files
        rewritten and the event file uploaded (at checkpoints, commits and the end); on
        local disk it already is."""
        if self.append:
            self.events.sync()
            return
        started = time.perf_counter()
        self._rewrite()
        sent = self.events.sync()
        log.debug("statistics synced to %s: event file %d bytes, in %.2f s", self.root, sent, time.perf_counter() - started)

    def write_summary(self, summary: dict) -> None:
        self.sync()
        storage.write_json(storage.join(self.root, "summary.json"), summary)

    def close(self) -> None:
        self.events.close()
        self.tracker.close()


def append_line(path: str, line: str) -> None:
    """One record appended in one write(2) call: a process killed at any moment leaves
    whole lines (O_APPEND; the data is the kernel's once the call returns)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)


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
    tokens, correct, tokens, steps, seconds, sync seconds, load seconds, page faults), and
    the slowest rank's seconds, peak RSS and trained seconds."""
    loss_x_tokens, correct, tokens, steps_done, _, sync, load, faults = sums
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
        # mean over ranks of the minor page faults of a step's thread: memory mapped in
        # afresh, which a step reusing its buffers avoids (allocator.py)
        "page_faults_per_step": faults / world_size / steps_done,
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
    config, tokenizer), the summary with the statistics (and, on S3, the last events
    and records), and the plots."""
    from horovod_llm import checkpoint
    from horovod_llm.training.plots import write_plots

    summary["model_zip_url"] = storage.join(output_url, checkpoint.MODEL_ZIP)
    checkpoint.export_model_zip(checkpoint_url, summary["model_zip_url"])
    stats.write_summary(summary)
    write_plots(layout.stats_url(output_url), stats.steps, stats.evals)
    stats.tracker.finish(output_url, summary)

"""The measurement behind `train.precision=auto` (precision.py): a few training steps of a
copy of the rank's model in fp32 and in bf16, through the same `train_step` the loop
runs (autocast, metrics, clipping, AdamW; only the allreduce left out, which carries
fp32 gradients either way), the best times kept per machine type, device, threads,
model shape and batch in `PRECISION_CACHE`, as the peak-FLOPs calibration keeps its
readings, so that a busy moment cannot turn a decision."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from horovod_llm.training.metrics import READINGS_TO_TRUST, read_readings, write_readings
from horovod_llm.training.precision import Calibration, Precision
from horovod_llm.training.step import train_step

PRECISION_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "horovod-llm" / "precision.json"


class LocalOptimizer:
    """AdamW with the distributed optimizer's interface train_step uses, for one process
    alone: nothing to synchronise."""

    def __init__(self, parameters):
        self.optimizer = torch.optim.AdamW(parameters, lr=1e-6)

    def __getattr__(self, name):  # param_groups, state, step...
        return getattr(self.optimizer, name)

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def synchronize(self) -> None:
        """One process: its gradients are already the average."""

    @contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        yield

    def step(self, closure=None):
        return self.optimizer.step(closure)


def calibration_key(device: torch.device, threads: int, ranks_on_host: int, model, batch_size: int) -> str:
    from horovod_llm.training.metrics import device_name

    c = model.config
    shape = f"{c.n_layer}x{c.n_embd} heads {c.n_head} context {c.block_size} vocabulary {c.vocab_size} batch {batch_size}"
    return f"{device_name(device)} | torch {torch.__version__} | {threads} thread(s) x {ranks_on_host} rank(s) | {shape}"


def measure(model, batch_size: int, device: torch.device, seconds: float = 1.0) -> tuple[float, float]:
    """(fp32, bf16) best seconds of a training step of `model` (`train_step`: forward,
    backward, metrics, clipping, AdamW) on random ids of one step's shape, taken on a copy
    so that the model and its optimizer stay as they were: whole steps, because the
    optimizer and the step's other fp32 work dilute what autocast gains on the passes. Rounds alternate
    between the precisions, so that a change in the machine's load touches both alike;
    at least 3 timed steps each, then rounds until `seconds` are spent. The global RNG
    (dropout, the data order) is left as it was."""
    c = model.config
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, c.vocab_size, (batch_size, c.block_size + 1), generator=generator).to(device)
    probe = copy.deepcopy(model)
    optimizer = LocalOptimizer(probe.parameters())

    def step_seconds(precision: Precision) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        started = time.perf_counter()
        train_step(probe, optimizer, [ids], 1.0, precision)  # its loss.item() waits for the GPU
        return time.perf_counter() - started

    arms = {name: Precision(name, device.type) for name in ("fp32", "bf16")}
    best = {name: float("inf") for name in arms}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for precision in arms.values():
            step_seconds(precision)  # warm-up: kernels, thread pools, caches, optimizer state
        started, rounds = time.perf_counter(), 0
        while rounds < 3 or (time.perf_counter() - started < seconds and rounds < 20):
            for name, precision in arms.items():
                best[name] = min(best[name], step_seconds(precision))
            rounds += 1
    return best["fp32"], best["bf16"]


def calibrate(model, batch_size: int, device: torch.device, threads: int, ranks_on_host: int, cache: Path = PRECISION_CACHE) -> Calibration:
    """This rank's fp32 and bf16 step times for `model`. Once `cache` holds
    READINGS_TO_TRUST readings of this key, their best without measuring again (a large
    model's steps take seconds, at every rank start); before, a fresh reading merged
    with the earlier ones (each precision's minimum: load only ever slows a reading down)."""
    key = calibration_key(device, threads, ranks_on_host, model, batch_size)
    known = read_readings(cache)
    earlier = known.get(key) if isinstance(known.get(key), dict) else {}
    if earlier.get("readings", 0) >= READINGS_TO_TRUST:
        return Calibration(earlier["fp32_s"], earlier["bf16_s"], "calibrated")
    fp32_s, bf16_s = measure(model, batch_size, device)
    best = {
        "fp32_s": min(fp32_s, earlier.get("fp32_s", float("inf"))),
        "bf16_s": min(bf16_s, earlier.get("bf16_s", float("inf"))),
        "readings": earlier.get("readings", 0) + 1,
    }
    source = "measured" if (best["fp32_s"], best["bf16_s"]) != (earlier.get("fp32_s"), earlier.get("bf16_s")) else "calibrated"
    write_readings(cache, known, key, best)
    return Calibration(best["fp32_s"], best["bf16_s"], source)

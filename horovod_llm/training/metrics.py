"""Measurements taken during training: accuracy, memory, the machine's matmul peak, MFU."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import time
from pathlib import Path

import torch

from horovod_llm.data.tokenizer import PAD_ID


def batch_metrics(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(correct predictions, counted tokens) over the non-PAD targets of a batch.

    A prediction is correct when the target's logit is the largest: compared with the
    maximum (`amax`) rather than through `argmax`, which on a CPU took 2.7 ms of a 70 ms
    step of the demo's model, 20 times as long (bench/profile_loop.py: 2.3% of the loop
    before, 0.4% after). The two differ only
    when the target ties another logit for the top, which argmax settles by position."""
    mask = targets != PAD_ID
    target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    correct = ((target_logits >= logits.amax(dim=-1)) & mask).sum()
    return float(correct), float(mask.sum())


# This thread's counters where the platform has them (Linux), else the process's.
_RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def thread_page_faults() -> int:
    """Minor page faults of the calling thread so far: memory the kernel had to map in
    (and zero) on first touch, which a step that reuses its buffers does not pay
    (allocator.py)."""
    return resource.getrusage(_RUSAGE_THREAD).ru_minflt


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure_matmul_flops(
    size: int | None = None, seconds: float = 0.5, readings: int = 5, dtype: torch.dtype = torch.float32, device: torch.device | None = None
) -> float:
    """Matmul FLOP/s in `dtype` this process reaches on `device` (its current torch
    threads on a CPU): the best of `readings` readings over `seconds` in all. The best,
    not the mean: other work on the machine can only slow a reading down, never speed it up.
    Square matrices of `size`: 1024 on a CPU; 8192 on a GPU, where a smaller product is
    bound by kernel launches and would understate the peak (and overstate MFU)."""
    device = device or torch.device("cpu")
    size = size or (8192 if device.type == "cuda" else 1024)
    generator = torch.Generator().manual_seed(0)  # leaves the global RNG (dropout) alone
    a, b = (torch.randn(size, size, generator=generator).to(device=device, dtype=dtype) for _ in range(2))

    def synchronize() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        a @ b  # warm-up: thread pool start, caches
    synchronize()
    best = 0.0
    for _ in range(readings):
        runs, started = 0, time.perf_counter()
        while runs == 0 or time.perf_counter() - started < seconds / readings:
            a @ b
            runs += 1
            if runs % 8 == 0:
                synchronize()  # a GPU queues asynchronously: time what it finished
        synchronize()
        best = max(best, 2 * size**3 * runs / (time.perf_counter() - started))
    return best


# Where the best peak seen so far is kept, per CPU model (or GPU), torch, precision,
# threads and ranks on the host: one machine type, one denominator, whatever the load
# when a run starts.
# Readings of a key after which rank starts take the cached best instead of measuring
# (calibration.py's precision timings keep the same rule).
READINGS_TO_TRUST = 3
PEAK_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "horovod-llm" / "peak-flops.json"


def cpu_model() -> str:
    return next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")), platform.machine())


def device_name(device: torch.device | None = None) -> str:
    """The machine type a measurement belongs to: the GPU's name, or the CPU model's."""
    if device is not None and device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def peak_key(threads: int, ranks_on_host: int, precision: str = "fp32", device: torch.device | None = None) -> str:
    # fp32 keeps the key it always had, so earlier readings still count
    dtype = "" if precision == "fp32" else f" | {precision}"
    return f"{device_name(device)} | torch {torch.__version__}{dtype} | {threads} thread(s) x {ranks_on_host} rank(s) on the host"


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def calibrated_peak_flops(
    threads: int, ranks_on_host: int, cache: Path = PEAK_CACHE, precision: str = "fp32", device: torch.device | None = None
) -> tuple[float, str]:
    """(matmul FLOP/s of one rank in `precision`, where it came from): the best of a
    fresh reading and every earlier one on this machine type with this layout (kept in
    `cache`); once the cache holds READINGS_TO_TRUST readings of the key, their best
    without reading again ("calibrated"), where every rank start spent a second on it.

    The ranks of a host measure at the same moment, as they will compute. A busy machine
    lowers a reading, and a lowered peak would raise MFU; the best reading ever seen is
    the stable denominator ("measured" when this reading set it, else "calibrated").
    """
    from horovod_llm.training.precision import DTYPES

    key = peak_key(threads, ranks_on_host, precision, device)
    known = read_readings(cache)
    earlier = _peak_entry(known.get(key))
    if earlier["readings"] >= READINGS_TO_TRUST:
        return earlier["flops"], "calibrated"
    reading = measure_matmul_flops(dtype=DTYPES[precision], device=device)
    best = {"flops": max(reading, earlier["flops"]), "readings": earlier["readings"] + 1}
    write_readings(cache, known, key, best)
    return best["flops"], "measured" if reading > earlier["flops"] else "calibrated"


def cached_peak_flops(key: str, cache: Path = PEAK_CACHE) -> float:
    """The best reading `cache` holds for `key` (0 where none)."""
    return _peak_entry(read_readings(cache).get(key))["flops"]


def read_readings(cache: Path) -> dict:
    """A cache of readings by key ({} when missing or damaged: it is measured again)."""
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def write_readings(cache: Path, known: dict, key: str, entry: dict) -> None:
    """`known` with `key` set to `entry`, written whole or not at all: the ranks of one
    host write at once. A read-only home keeps nothing; the reading still serves this run."""
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
        temporary = cache.with_name(f".{cache.name}.{os.getpid()}")
        temporary.write_text(json.dumps({**known, key: entry}, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, cache)


def _peak_entry(entry) -> dict:
    """A cache entry as {flops, readings}: a bare number is an older version's best
    reading, which counts as one."""
    if isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)) and isinstance(entry.get("readings"), int):
        return entry
    if isinstance(entry, (int, float)) and entry > 0:
        return {"flops": float(entry), "readings": 1}
    return {"flops": 0.0, "readings": 0}


def model_flops_utilisation(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs per second over the peak (nanoGPT's estimate of model FLOPs)."""
    return flops_per_token * tokens_per_s / peak_flops if peak_flops > 0 else float("nan")

"""Measurements taken during training: accuracy, memory, the machine's matmul peak, MFU."""

from __future__ import annotations

import resource
import time

import torch

from horovod_llm.tokenizer import PAD_ID


def batch_metrics(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, float]:
    """(correct predictions, counted tokens) over the non-PAD targets of a batch."""
    mask = targets != PAD_ID
    correct = ((logits.argmax(dim=-1) == targets) & mask).sum()
    return float(correct), float(mask.sum())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def measure_matmul_flops(size: int = 1024, seconds: float = 0.5) -> float:
    """fp32 matmul FLOP/s this process reaches with its current torch threads: the peak
    that model FLOPs utilisation is measured against (CPU vendors publish none we could
    trust for a shared VM)."""
    generator = torch.Generator().manual_seed(0)  # leaves the global RNG (dropout) alone
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    for _ in range(3):
        a @ b  # warm-up: thread pool start, caches
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started)


def model_flops_utilisation(flops_per_token: float, tokens_per_s: float, peak_flops: float) -> float:
    """Model FLOPs per second over the peak (nanoGPT's estimate of model FLOPs)."""
    return flops_per_token * tokens_per_s / peak_flops if peak_flops > 0 else float("nan")

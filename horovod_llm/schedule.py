"""Learning-rate schedule: linear warm-up, then cosine decay to `min_lr` (pure)."""

from __future__ import annotations

import math


def learning_rate_at(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """The learning rate for optimizer step `step` (1-based) of `total_steps`."""
    if warmup_steps and step <= warmup_steps:
        return max_lr * step / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)

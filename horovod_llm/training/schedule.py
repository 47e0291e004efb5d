"""Learning-rate schedule and training clock: linear warm-up, then cosine decay to
`min_lr`, following the steps done or the share of a wall-clock budget spent (pure)."""

from __future__ import annotations

import math
from dataclasses import dataclass


def learning_rate_at(step: int, *, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int | None, elapsed_fraction: float = 0.0) -> float:
    """The learning rate for optimizer step `step` (1-based). After the warm-up, the
    cosine follows whichever is further along: the steps (of `total_steps`; None when
    only a budget ends the run) or `elapsed_fraction` of a wall-clock budget."""
    if warmup_steps and step <= warmup_steps:
        return max_lr * step / warmup_steps
    by_steps = max(step - warmup_steps, 0) / max(total_steps - warmup_steps, 1) if total_steps else 0.0
    progress = min(max(by_steps, elapsed_fraction), 1.0)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (max_lr - min_lr)


@dataclass
class TrainingClock:
    """Seconds of training, the same number on every rank, against a budget.

    Ranks' clocks differ, and a rank that stopped one step before the others would hang
    them in an allreduce; so each rank never reads its own clock. The seconds are synced
    (the slowest rank's) at the steps that log statistics, which reduce across ranks
    anyway, and extrapolated by the synced seconds per step in between: every rank
    computes the same estimate from the same numbers, so they agree on the learning
    rate and on the step where the budget runs out.
    """

    budget_seconds: float  # 0: no budget
    synced_seconds: float  # trained seconds at `synced_step` (a resumed run's included)
    synced_step: int
    seconds_per_step: float = 0.0

    def seconds_at(self, step: int) -> float:
        return self.synced_seconds + (step - self.synced_step) * self.seconds_per_step

    def sync(self, step: int, trained_seconds: float, seconds_per_step: float) -> None:
        """Take the shared seconds at `step`; never behind the estimate already used, so
        that the schedule's progress (and the learning rate's decay) only moves forward."""
        self.synced_seconds = max(trained_seconds, self.seconds_at(step))
        self.synced_step, self.seconds_per_step = step, seconds_per_step

    def fraction(self, step: int) -> float:
        """The share of the budget spent after `step` (0 without a budget)."""
        return min(self.seconds_at(step) / self.budget_seconds, 1.0) if self.budget_seconds else 0.0

    def spent(self, step: int) -> bool:
        return bool(self.budget_seconds) and self.seconds_at(step) >= self.budget_seconds

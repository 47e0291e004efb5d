"""Python's cyclic garbage collector, run by the training loop at steps every rank shares.

Left to itself, the collector runs whenever a process's allocations cross its
thresholds: every few steps a young collection (about 0.1 ms for generation 0, 1 ms for
1, measured on the demo's ranks) and now and then a full one over every object the
imports and set-up made (400,000 of them: 90 ms on average, up to 170). Each rank pauses
at its own moments, and at the next allreduce the other ranks wait for it, so a pause
costs every rank. torchtitan turns the collector off for the same reason and collects
every N steps on all ranks at once; here too, and what set-up left behind is frozen
(gc.freeze) first, so that those collections walk only what the loop itself made.

Off by default (train.gc_interval=0): on 2 ranks of the demo, paired runs showed no
gain beyond their spread (bench/paired.py --compare gc).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


class StepCollector:
    """`after_step(step)` collects at every `interval`th step; `interval` 0 leaves the
    collector to its own thresholds."""

    def __init__(self, interval: int):
        self.interval = interval

    def after_step(self, step: int) -> None:
        if self.interval and step % self.interval == 0:
            gc.collect()


@contextmanager
def collections_at_steps(interval: int) -> Iterator[StepCollector]:
    """The training loop's collector: off, with set-up's objects frozen, for the loop's
    length, and as it was afterwards (a notebook or the local launcher trains in process)."""
    if not interval:
        yield StepCollector(0)
        return
    was_enabled = gc.isenabled()
    gc.collect()  # what set-up left unreachable goes now, not into the frozen set
    gc.freeze()
    gc.disable()
    try:
        yield StepCollector(interval)
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()

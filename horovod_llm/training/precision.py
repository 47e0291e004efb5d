"""The arithmetic a rank trains in: fp32, or bf16 / fp16 under autocast, and how
`train.precision=auto` chooses between them by measuring.

Mixed precision as torch's AMP does it: the weights, the optimizer state and therefore
every checkpoint stay fp32 (a run resumes under another precision, and export, generate
and serve never see the difference); autocast runs the matrix products of the forward
and backward passes in the low precision. fp16's narrow range needs a gradient scaler
(GPUs without bf16); bf16 has fp32's range and needs none. The measurement behind
`auto` is calibration.py's.

`auto` decides by measuring, never by a CPU's name: autocast's casts can cost more than
they save on small models, and the gain grows with width and differs between CPUs with
and without AMX (bench/precision.py; its figures are in bench/results.md). Each rank times a few training steps of a copy of its own model in
fp32 and bf16 at rank start (calibration.py, its best readings cached per machine type
and model shape); the ranks then agree on the slowest rank's gain (loop.py).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# The smallest normal fp32 number: below it (and above 0) lie the subnormals.
_SMALLEST_NORMAL = torch.finfo(torch.float32).tiny


def flush_denormals() -> bool:
    """Flush subnormal floats to zero in this thread's CPU arithmetic, and in the threads
    it starts from now on (they inherit its floating-point state); False where the CPU
    cannot.

    Why: attention's backward pass produces subnormal gradients where the softmax puts
    next to no weight (300 to 2,100 a step in the demo model's query/key/value gradient
    over 1,600 steps), and an x86 core takes a slow microcode path for every
    multiplication that meets one. A bare loop of the demo model at a constant learning
    rate slowed from 24.6k to 20.9k tokens/s over its first 20 s, and ran at 23.4k
    throughout with this (Intel Xeon, one thread, 60 s runs, issue 28). Values under
    1.2e-38 are far below what an fp32 weight update can register; bf16's dot-product
    instructions (AVX512-BF16, AMX) already treat them as zero, and TensorFlow flushes
    them by default on CPUs. Like the thread count and malloc's settings, this is
    process state: a rank sets it at start (train.prepare_rank_process)."""
    return torch.set_flush_denormal(True)


def denormals_flushed() -> bool:
    """Whether this thread's arithmetic flushes subnormals to zero: observed, not assumed."""
    return float(torch.tensor(_SMALLEST_NORMAL) * 0.5) == 0.0


# bf16 is chosen when its step is at least this much faster than fp32's: a smaller
# gain is within what two readings of the same step differ by on a shared machine.
MIN_SPEEDUP = 1.10


@dataclass(frozen=True)
class Precision:
    """One of fp32, bf16 or fp16 on a device type ("cpu" or "cuda")."""

    name: str
    device_type: str = "cpu"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    def autocast(self) -> AbstractContextManager:
        """The forward pass's context: autocast to this precision (nothing for fp32)."""
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.name != "fp32")

    def grad_scaler(self) -> torch.amp.GradScaler:
        """fp16's loss scaling (a pass-through for fp32 and bf16)."""
        return torch.amp.GradScaler(self.device_type, enabled=self.name == "fp16")


@dataclass(frozen=True)
class Calibration:
    """Seconds of one training step of the model in fp32 and in bf16: the best readings on
    this machine type so far, and whether this rank start measured them."""

    fp32_s: float
    bf16_s: float
    source: str  # "measured" (this reading set a best) or "calibrated" (earlier ones)

    @property
    def bf16_speedup(self) -> float:
        return self.fp32_s / self.bf16_s


def choose(setting: str, bf16_speedup: float | None) -> str:
    """The precision to train in: the setting, or for `auto` bf16 when the (slowest
    rank's) measured speedup reaches MIN_SPEEDUP, else fp32."""
    if setting != "auto":
        return setting
    return "bf16" if bf16_speedup is not None and bf16_speedup >= MIN_SPEEDUP else "fp32"

"""The sampling settings of text generation: one type, the single source of their
defaults, help texts and rules.

The `generate` config section, `horovod-llm generate`'s flags and the server's request
body are all derived from `Sampling`, and all checked by `Sampling.problems`. No torch
here: the config loader imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

# Bounds beyond which a setting is a mistake rather than a choice.
MAX_TEMPERATURE = 100.0
MAX_NEW_TOKENS = 100_000
MAX_SEED = 2**63 - 1


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = field(default=200, metadata={"help": "tokens to generate at most (a sample also ends at EOS or a stop string)"})
    temperature: float = field(default=0.8, metadata={"help": "0 means greedy"})
    top_k: int = field(default=50, metadata={"help": "sample among the k most likely tokens; 0 means no top-k filter"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling: the most likely tokens up to this probability; 1 means off"})
    seed: int = field(default=42, metadata={"help": "the same seed and settings give the same text"})
    stop: tuple[str, ...] = field(default=(), metadata={"help": "end a sample before this text (repeatable)"})

    def problems(self, max_new_tokens: int = MAX_NEW_TOKENS) -> list[str]:
        """Every invalid setting, as `name (value) must be ...`, named as the fields are;
        `max_new_tokens` is the caller's ceiling (a server's limit)."""
        problems = []
        if not 1 <= self.max_new_tokens <= max_new_tokens:
            problems.append(f"max_new_tokens ({self.max_new_tokens}) must be between 1 and {max_new_tokens}")
        if not (math.isfinite(self.temperature) and 0 <= self.temperature <= MAX_TEMPERATURE):
            problems.append(f"temperature ({self.temperature}) must be 0 (greedy) or a positive number up to {MAX_TEMPERATURE:g}")
        if self.top_k < 0:
            problems.append(f"top_k ({self.top_k}) must be 0 (off) or more")
        if not (math.isfinite(self.top_p) and 0 < self.top_p <= 1):
            problems.append(f"top_p ({self.top_p}) must be in (0, 1] (1 is off)")
        if not 0 <= self.seed <= MAX_SEED:
            problems.append(f"seed ({self.seed}) must be between 0 and 2**63 - 1")
        if any(stop == "" for stop in self.stop):
            problems.append("stop ('') must not be an empty string")
        return problems


def sampling_fields():
    """The settings' dataclass fields, for the types derived from `Sampling`."""
    return fields(Sampling)


def flag(name: str) -> str:
    """A setting's command-line flag: top_p -> --top-p."""
    return "--" + name.replace("_", "-")


def as_flags(sampling: Sampling) -> list[str]:
    """`horovod-llm generate`'s flags for these settings (an EMR step's command line)."""
    args = []
    for f in sampling_fields():
        value = getattr(sampling, f.name)
        for item in value if isinstance(value, tuple) else (value,):
            args += [flag(f.name), str(item)]
    return args


def default(name: str):
    """A setting's default value."""
    return next(f.default for f in sampling_fields() if f.name == name)

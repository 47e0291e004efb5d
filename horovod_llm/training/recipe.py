"""The recipe: the settings a user leaves unset, chosen from the corpus's size and the
training budget by a rule measured on these machines.

The rule's numbers come from sweeps with `bench/quality.py` (2 ranks x 1 thread of a
2-core machine, held-out text; the README's quality section shows the rule beside the
figures). Its shape: the vocabulary grows with the corpus (more text supports more
pieces); the model with the budget (a larger model needs more steps to pay off); once the
budget would show the model the same text many times, windows start closer together and
dropout comes in, more of it the more the text repeats. Explicit settings always win, and
one resolved config is what preprocessing and training record.

Preprocessing and training resolve alike, from the same two numbers (the corpus's bytes,
which the dataset's manifest keeps, and train.max_minutes), so they agree without talking.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from horovod_llm.config import RunConfig, validate

log = logging.getLogger(__name__)

# The budget the rule assumes when train.max_minutes is 0 (a run bounded by steps).
DEFAULT_BUDGET_S = 300.0


@dataclass(frozen=True)
class Recipe:
    vocab_size: int
    window_size: int
    overlap: int
    n_layer: int
    n_head: int
    n_embd: int
    dropout: float
    batch_size: int  # windows per rank per step
    learning_rate: float
    min_lr: float
    warmup_steps: int


# (largest corpus in bytes, vocabulary): a BPE vocabulary the corpus can fill. Measured at
# 1.1 MB and 90 s: 1024 beat 512 (fewer characters per token) and 2048 (a larger output
# layer costs steps). The larger rows keep the pieces-per-corpus ratio (not swept).
VOCABULARY = [(2_000_000, 1024), (20_000_000, 2048), (200_000_000, 4096), (float("inf"), 8192)]
# (largest budget in seconds, n_layer, n_head, n_embd, context, learning rate). A short
# budget is limited by the steps it can take, not by the text: at 90 s on 2 cores, 2
# layers and a context of 64 (about 150 characters) beat 4 or 6 layers and contexts of
# 128 or 256 by 0.1 to 0.2 nats/char; a learning rate of 4e-3 did as well as 2e-3 (0.01
# better, within the noise of one seed) and 1e-3 was worse (bench/results.md, the sweeps). The rows beyond 10 minutes grow the model with the tokens the budget
# buys, as compute-optimal scaling suggests; they are not swept here.
MODEL = [
    (600.0, 2, 4, 128, 64, 4e-3),
    (3_600.0, 4, 4, 128, 128, 2e-3),
    (6 * 3_600.0, 6, 8, 256, 128, 1e-3),
    (float("inf"), 8, 8, 384, 256, 6e-4),
]
# The rows the sweeps measured (by their limit); the others are extrapolated, and every
# table of the rule says so.
SWEPT_CORPUS_LIMITS = (2_000_000,)
SWEPT_BUDGET_LIMITS = (600.0,)
# Epochs of the corpus the budget allows, beyond which the text is repeated enough for the
# two remedies below to pay off: below it, every step sees nearly fresh text (nanoGPT's
# CPU example trains 7 epochs without dropout).
REPEATED_FROM_EPOCHS = 10.0
# Where the text repeats, a window starts every eighth of a window instead of every half:
# windows at fixed starts show each token at the same 2 positions every epoch, where
# nanoGPT's trainer draws random offsets. At 350 s on the development slice of 0.88 MB of
# Shakespeare (issue 28, Intel Xeon, one seed each) a stride of 16 tokens scored 1.636
# nats/char and 8 tokens 1.630, against 1.684 at 32 and 1.646 for the reference trainer;
# 4 layers on top of the stride of 8 scored 1.639. The cost: 4x the training windows on
# disk; the validation split keeps windows half a window apart (windows.split_overlap).
WINDOW_STARTS_PER_WINDOW_REPEATED = 8
# (most epochs of the corpus the budget allows, dropout). 0.1 from REPEATED_FROM_EPOCHS: at
# 350 s on 1.1 MB it took held-out text from 1.748 to 1.641 nats/char, where 0.2 scored
# 1.704 against 0.1's 1.686 (bench/sweep.py, AMD). 0.2 where the text repeats many more
# times: 0.37 MB of Python's documentation at 350 s (72 epochs by this estimate) scored
# 1.249 with 0.2 against 1.373 with 0.1 (issue 28, Intel, one seed each).
DROPOUT = [(REPEATED_FROM_EPOCHS, 0.0), (45.0, 0.1), (float("inf"), 0.2)]
# Tokens per second one 2-core machine trains of the smallest model, and characters per
# token of a 1024-piece vocabulary on English: the rule's estimate of the epochs a budget
# allows. Measured by bench/quality.py and bench/sweep.py at issue 28 (33.6k tokens/s, bf16,
# 2 ranks x 1 thread of an AMD EPYC, after the allocator and Horovod wake-up changes; 2.32
# characters per token). An Intel Xeon with AMX trains about 50k, so the thresholds above
# are in the AMD machine's epochs. At 33.6k, 350 s shows 1.1 MB 17 epochs: on the
# development slice the rule's model with dropout 0.1 scored 1.686 nats/char, a 192-wide
# one 1.682 and dropout 0.2 1.704 (one seed each, within the seeds' spread of about 0.03),
# so the rule kept its model; at 350 s on the Intel machine 4 layers scored 1.661 (0.1) and
# 1.674 (0.2), 3 layers x 192 1.691, a context of 128 1.730 (bench/results.md).
TOKENS_PER_S = 33_600
CHARS_PER_TOKEN = 2.3


def choose(corpus_bytes: int, budget_s: float) -> Recipe:
    """The rule (pure): every setting the recipe fills, for a corpus and a budget."""
    vocab_size = next(size for limit, size in VOCABULARY if corpus_bytes <= limit)
    n_layer, n_head, n_embd, window_size, learning_rate = next(shape for limit, *shape in MODEL if budget_s <= limit)
    epochs = estimated_epochs(corpus_bytes, budget_s)
    return Recipe(
        vocab_size=vocab_size,
        window_size=window_size,
        overlap=overlap_for(window_size, epochs),
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        dropout=next(dropout for most, dropout in DROPOUT if epochs <= most),
        batch_size=16,
        learning_rate=learning_rate,
        min_lr=learning_rate / 10,
        warmup_steps=30,
    )


def estimated_epochs(corpus_bytes: int, budget_s: float) -> float:
    """How many times the budget would show the model the corpus, at the rule's pace."""
    return budget_s * TOKENS_PER_S / max(corpus_bytes / CHARS_PER_TOKEN, 1.0)


def overlap_for(window_size: int, epochs: float) -> int:
    """Windows overlapping by half, or, where the text repeats, starting every eighth of a window."""
    if epochs > REPEATED_FROM_EPOCHS:
        return window_size - max(window_size // WINDOW_STARTS_PER_WINDOW_REPEATED, 1)
    return window_size // 2


# Where each setting of the recipe lives in the config.
_FIELDS = {
    "vocab_size": "tokenizer",
    "window_size": "data",
    "overlap": "data",
    "n_layer": "model",
    "n_head": "model",
    "n_embd": "model",
    "dropout": "model",
    "batch_size": "train",
    "learning_rate": "train",
    "min_lr": "train",
    "warmup_steps": "train",
}
# A character-level tokenizer's vocabulary is only a ceiling on the characters it keeps.
CHAR_VOCABULARY = 1024


def resolve(config: RunConfig, corpus_bytes: int) -> RunConfig:
    """The config with every unset setting of the recipe filled in by the rule, validated.
    A config with none unset comes back unchanged."""
    unset = [name for name, section in _FIELDS.items() if getattr(getattr(config, section), name) is None]
    if not unset:
        return config
    budget_s = 60.0 * config.train.max_minutes or DEFAULT_BUDGET_S
    chosen = dataclasses.asdict(choose(corpus_bytes, budget_s))
    if config.tokenizer.model_type == "char":
        chosen["vocab_size"] = CHAR_VOCABULARY
    if config.model.n_embd is not None and config.model.n_head is None:
        chosen["n_head"] = next(h for h in (chosen["n_head"], 8, 6, 4, 2, 1) if config.model.n_embd % h == 0)
    if config.data.window_size is not None and config.data.overlap is None:
        chosen["overlap"] = overlap_for(config.data.window_size, estimated_epochs(corpus_bytes, budget_s))
    if config.train.learning_rate is not None and config.train.min_lr is None:
        chosen["min_lr"] = config.train.learning_rate / 10
    sections = {}
    for section in ("tokenizer", "data", "model", "train"):
        values = {name: chosen[name] for name in unset if _FIELDS[name] == section}
        sections[section] = dataclasses.replace(getattr(config, section), **values)
    resolved = dataclasses.replace(config, **sections)
    validate(resolved)
    log.info(
        "recipe for %.1f MB of text and %.0f s of training: %s%s",
        corpus_bytes / 1e6, budget_s, " ".join(f"{_FIELDS[name]}.{name}={chosen[name]}" for name in unset), _extrapolated(corpus_bytes, budget_s),
    )  # fmt: skip
    return resolved


def _extrapolated(corpus_bytes: int, budget_s: float) -> str:
    """' (...: extrapolated, not swept)' when a row the rule used was not measured."""
    vocabulary = next(limit for limit, _ in VOCABULARY if corpus_bytes <= limit)
    model = next(limit for limit, *_ in MODEL if budget_s <= limit)
    rows = [name for name, limit, swept in (("vocabulary", vocabulary, SWEPT_CORPUS_LIMITS), ("model", model, SWEPT_BUDGET_LIMITS)) if limit not in swept]
    return f" ({' and '.join(rows)} {'rows' if len(rows) > 1 else 'row'} extrapolated, not swept)" if rows else ""

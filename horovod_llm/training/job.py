"""What the driver and every rank decide alike about a training job.

The model's shape (from the run config and the dataset's manifest), the checks that
refuse a job, torch threads per rank, and the step and learning-rate arithmetic. The
driver calls `check_job` before it starts any rank, and every rank calls it again (under
`horovodrun` no driver ran it), so both refuse the same jobs with the same words. Pure.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from horovod_llm.config import RunConfig, TrainConfig

import os

from horovod_llm.data.manifest import Manifest
from horovod_llm.data.tokenizer import PAD_ID
from horovod_llm.errors import UserError
from horovod_llm.model import GPTConfig


def gpt_config(config: RunConfig, vocab_size: int, block_size: int) -> GPTConfig:
    """The config's model shape for a vocabulary and a context length."""
    m = config.model
    return GPTConfig(
        vocab_size=vocab_size,
        block_size=block_size,
        n_layer=m.n_layer,
        n_head=m.n_head,
        n_embd=m.n_embd,
        dropout=m.dropout,
        bias=m.bias,
        positional=m.positional,
        tie_weights=m.tie_weights,
        pad_id=PAD_ID,
        init_std=m.init_std,
    )


def model_config(config: RunConfig, manifest: Manifest) -> GPTConfig:
    """The model for a dataset: its vocabulary and window size, the config's shape."""
    return gpt_config(config, manifest.tokenizer.vocab_size, manifest.window_size)


def check_job(config: RunConfig, manifest: Manifest, mpi_built: bool) -> None:
    """Refuse what no rank could train: Word2Vec initialisation without vectors, and an
    allreduce this Horovod build lacks (Adasum on CPU needs MPI; this stack builds Gloo)."""
    if config.model.init_from_word2vec and manifest.embeddings is None:
        raise UserError(
            "model.init_from_word2vec=true but the dataset has no Word2Vec vectors: "
            "re-run preprocess with embedding.word2vec.enabled=true, or set model.init_from_word2vec=false"
        )
    if config.train.allreduce_op == "adasum" and not mpi_built:
        raise UserError("train.allreduce_op=adasum needs Horovod built with MPI (this build has Gloo only): set train.allreduce_op=average")


def threads_for_rank(configured: int, local_size: int) -> int:
    """Torch threads per rank: as configured, else this host's cores shared by its ranks
    (more would oversubscribe the cores: 2 ranks x N threads on N cores)."""
    if configured > 0:
        return configured
    return max(1, (os.cpu_count() or 1) // max(local_size, 1))


def steps_per_epoch(num_windows: int, windows_per_step: int) -> int:
    """Optimizer steps per epoch, the same on every rank (lock-step allreduce), with
    `windows_per_step` = batch size x micro-batches x ranks.

    Counted from the global row count, never from a rank's reader running dry: shards
    are by row group and can be uneven, and a rank that stops early hangs the others.
    """
    return max(1, num_windows // windows_per_step)


def total_steps(train: TrainConfig, steps_per_epoch_: int) -> int | None:
    """The last step: train.max_steps when set, else train.epochs whole epochs; with
    neither, one epoch, or None (no limit but the wall-clock budget) under a budget."""
    if train.max_steps:
        return train.max_steps
    if train.epochs is not None:
        return train.epochs * steps_per_epoch_
    return None if train.max_minutes else steps_per_epoch_


def learning_rates(train: TrainConfig, world_size: int) -> tuple[float, float]:
    """(peak, floor) of the schedule; Horovod's rule, when asked for, multiplies both by
    the number of ranks (their batches add up to a larger global batch)."""
    scale = world_size if train.scale_lr_by_ranks else 1
    return train.learning_rate * scale, train.min_lr * scale

"""Resuming a training job: the latest complete checkpoint, and where the data stood."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import torch

from horovod_llm import checkpoint

log = logging.getLogger(__name__)


@dataclass
class Resumed:
    step: int = 0
    rng_states: list | None = None  # every rank's torch RNG state at that step
    data: dict | None = None  # the data position: seed, world size, batches consumed
    trained_seconds: float = 0.0  # of training behind the checkpoint: the budget already spent


def restore_latest(output_url: str, model, optimizer, resume: bool, tokenizer_sha256: str, remove_partial: bool = True) -> Resumed:
    """Load the latest complete checkpoint into model and optimizer."""
    # At the start of a job no writer runs yet: partial folders are leftovers of a crash.
    removed = checkpoint.remove_incomplete(output_url) if remove_partial else []
    if removed:
        log.warning("removed incomplete checkpoint folder(s) left by an interrupted writer: %s", ", ".join(removed))
    latest = checkpoint.checkpoint_to_resume(output_url, resume)
    if latest is None:
        return Resumed()
    step, url = latest
    state = checkpoint.load_training_state(url, dataclasses.asdict(model.config), tokenizer_sha256)
    model.load_state_dict(state.model)
    if state.optimizer is not None:
        optimizer.load_state_dict(state.optimizer)
    log.info("resuming from %s (step %d)", url, step)
    return Resumed(step, state.rng_states, state.meta.get("data"), float(state.meta.get("trained_seconds", 0.0)))


def rng_state(device: torch.device):
    """This rank's RNG state for a checkpoint: torch's CPU generator (dropout on the CPU),
    and on CUDA the device's generator too (dropout there draws from it)."""
    if device.type != "cuda":
        return torch.get_rng_state()
    return {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(device)}


def set_rng_state(state, device: torch.device) -> None:
    """Continue from `rng_state`'s value (a checkpoint's, of the same world size)."""
    if isinstance(state, dict):
        torch.set_rng_state(state["cpu"])
        if device.type == "cuda" and state.get("cuda") is not None:
            torch.cuda.set_rng_state(state["cuda"], device)
    else:  # written on the CPU (or before CUDA states were kept)
        torch.set_rng_state(state)


@dataclass(frozen=True)
class DataPosition:
    seed: int  # the reader's shuffling seed
    consumed: int  # batches of this order already trained on
    world_size: int  # the shards the order is for


def data_position(resumed: Resumed, seed: int, world_size: int) -> DataPosition:
    """Where this job's data order starts. A resumed job replays the checkpoint's order
    (same seed) after the batches it consumed; with another world size the shards
    differ, so a fresh order (the seed moved on by the step) is the honest choice."""
    if resumed.data and resumed.data.get("world_size") == world_size:
        return DataPosition(resumed.data["seed"], resumed.data["batches_consumed"], world_size)
    if resumed.step:
        return DataPosition(seed + resumed.step, 0, world_size)
    return DataPosition(seed, 0, world_size)

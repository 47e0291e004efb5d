"""Checkpoint folders `checkpoints/step-XXXXXXXX/`: self-describing, complete or invisible.

A folder holds the weights, the optimizer state, the resolved config, the tokenizer
and `meta.json` (step, model arguments, metrics); `COMPLETE` is written last, and a
reader ignores any folder without it. A checkpoint is data, never code:

- the weights are in `model.safetensors` (a header and raw tensors: nothing to
  unpickle), which readers prefer, and in `model.pt` (torch's pickle format), which
  versions of this package before safetensors read. A tied `lm_head.weight` is
  `wte.weight` itself: safetensors stores no aliases, so it is saved once and tied
  again on load.
- checkpoints written before safetensors, and the optimizer and RNG states, load with
  `torch.load(weights_only=True)`, whose unpickler builds tensors and plain containers
  only.

`model.zip` is the shippable form of a checkpoint for inference: a zip holding the
folder's weights, `meta.json` and `tokenizer.model` at its top level (no optimizer
state, no marker: the archive is written whole, atomically). `export_model_zip` writes
one (with `model.safetensors` even from a checkpoint written before it) and
`load_checkpoint` reads one like a folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import pickle
import re
import zipfile
from dataclasses import dataclass

import safetensors
import safetensors.torch
import torch

from horovod_llm import layout, storage
from horovod_llm.config import RunConfig, from_dict
from horovod_llm.errors import UserError
from horovod_llm.model import GPT, GPTConfig
from horovod_llm.redaction import redacted_dict, redacted_yaml
from horovod_llm.training.device import on_cpu

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
MODEL_ZIP = "model.zip"
WEIGHTS = "model.safetensors"
PICKLED_WEIGHTS = "model.pt"
# What export_model_zip writes; a reader needs meta.json, tokenizer.model and either weights file.
ZIP_MEMBERS = (WEIGHTS, PICKLED_WEIGHTS, "meta.json", "tokenizer.model")
TIED = "lm_head.weight"  # stored as wte.weight when tie_weights
_STEP_DIR = re.compile(r"^step-(\d{8})$")

# What a checkpoint from elsewhere may make a reader allocate: generous defaults, settable
# by environment variable. A model.zip member inflates to its declared size at most (a
# zip bomb declares gigabytes in kilobytes), and meta.json's model_args size the model
# built before any weight is read.
MAX_FILE_BYTES_ENV, MAX_PARAMETERS_ENV = "HOROVOD_LLM_MAX_CHECKPOINT_FILE_MB", "HOROVOD_LLM_MAX_MODEL_PARAMETERS"
DEFAULT_MAX_FILE_MB, DEFAULT_MAX_PARAMETERS = 16 * 1024, 4_000_000_000


def max_file_bytes() -> int:
    return int(float(os.environ.get(MAX_FILE_BYTES_ENV, DEFAULT_MAX_FILE_MB)) * 2**20)


def max_parameters() -> int:
    return int(float(os.environ.get(MAX_PARAMETERS_ENV, DEFAULT_MAX_PARAMETERS)))


def _check_size(url: str, name: str, size: int) -> None:
    if size > max_file_bytes():
        raise UserError(
            f"{name} in checkpoint {url} holds {size / 2**20:.0f} MB, over the {max_file_bytes() / 2**20:.0f} MB a checkpoint file may: "
            f"use a checkpoint you trust, or raise {MAX_FILE_BYTES_ENV}"
        )


def parameter_count(args: dict) -> int:
    """The parameters GPT(GPTConfig(**args)) would allocate, from the arguments alone."""
    v, t, layers, c = (int(args[k]) for k in ("vocab_size", "block_size", "n_layer", "n_embd"))
    bias = bool(args.get("bias"))
    per_layer = 12 * c * c + (13 * c if bias else 2 * c)  # attention and MLP matrices, their biases, two LayerNorms
    embeddings = v * c * (1 if args.get("tie_weights", True) else 2) + (t * c if args.get("positional") == "learned" else 0)
    return embeddings + layers * per_layer + (2 * c if bias else c)  # and the final LayerNorm


def check_model_args(url: str, args) -> None:
    """Refuse, in one line, model_args that are not a model's or that size one past the limit."""
    shape = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd")
    if not isinstance(args, dict) or any(not isinstance(args.get(k), int) or isinstance(args.get(k), bool) or args[k] < 1 for k in shape):
        raise UserError(f"checkpoint {url} has no valid model arguments in meta.json ({', '.join(shape)} must be positive whole numbers): it is damaged")
    if args["n_embd"] % args["n_head"]:
        raise UserError(
            f"checkpoint {url}'s model arguments are inconsistent (n_embd {args['n_embd']} is not a multiple of n_head {args['n_head']}): it is damaged"
        )
    count = parameter_count(args)
    if count > max_parameters():
        raise UserError(
            f"checkpoint {url} asks for a model of {count:.3g} parameters, over the {max_parameters():.3g} a checkpoint may: "
            f"use a checkpoint you trust, or raise {MAX_PARAMETERS_ENV}"
        )


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def _tensor_bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _safetensors_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """A model state dict as safetensors, a tied lm_head.weight left out (see the module's docstring)."""
    state = dict(state)
    if TIED in state and state[TIED].data_ptr() == state["wte.weight"].data_ptr():
        del state[TIED]
    return safetensors.torch.save({name: tensor.contiguous() for name, tensor in state.items()}, metadata={"format": "pt"})


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict on the CPU, as a checkpoint holds it wherever the model trained; a
    tied lm_head.weight still the same tensor as wte.weight."""
    if all(tensor.device.type == "cpu" for tensor in state.values()):
        return state
    tied = TIED in state and state[TIED].data_ptr() == state["wte.weight"].data_ptr()
    moved = {name: tensor.detach().cpu() for name, tensor in state.items()}
    if tied:
        moved[TIED] = moved["wte.weight"]
    return moved


def save_checkpoint(
    output_url: str,
    step: int,
    model: GPT,
    optimizer,
    config: RunConfig,
    tokenizer_bytes: bytes,
    meta: dict,
    rng_states: list[torch.Tensor] | None = None,
) -> str:
    """Write one checkpoint folder, marker last; return its URL.

    `rng_states` holds every rank's torch RNG state (dropout), for exact resumption.
    Tensors are written from the CPU wherever the model trained.
    """
    url = storage.join(layout.checkpoints_url(output_url), step_dir_name(step))
    storage.remove(url)  # a partial folder left by a crashed writer at this step
    state = _cpu_state(model.state_dict())
    storage.write_bytes(storage.join(url, WEIGHTS), _safetensors_bytes(state))
    storage.write_bytes(storage.join(url, PICKLED_WEIGHTS), _tensor_bytes(state))
    if optimizer is not None:
        # The optimizer state is nested (param groups, step counts, a dict per parameter):
        # safetensors holds only a flat map of tensors, so it stays in torch's format.
        storage.write_bytes(storage.join(url, "optimizer.pt"), _tensor_bytes(on_cpu(optimizer.state_dict())))
    if rng_states is not None:
        storage.write_bytes(storage.join(url, "rng.pt"), _tensor_bytes(rng_states))
    storage.write_bytes(storage.join(url, "tokenizer.model"), tokenizer_bytes)
    storage.write_text(storage.join(url, "config.yaml"), redacted_yaml(config))
    storage.write_json(
        storage.join(url, "meta.json"),
        {"step": step, "model_args": dataclasses.asdict(model.config), "config": redacted_dict(config), **meta},
    )
    storage.write_text(storage.join(url, MARKER), f"{step}\n")
    return url


def complete_checkpoints(output_url: str) -> list[tuple[int, str]]:
    """[(step, url)] of the complete checkpoints under output_url, oldest first."""
    root = layout.checkpoints_url(output_url)
    found = []
    for name in storage.list_dir(root):
        match = _STEP_DIR.match(name)
        if match and storage.exists(storage.join(root, name, MARKER)):
            found.append((int(match.group(1)), storage.join(root, name)))
    return sorted(found)


def prune_checkpoints(output_url: str, keep_last: int) -> None:
    """Keep the newest `keep_last` complete checkpoints; drop older and partial ones."""
    complete = complete_checkpoints(output_url)
    if not complete:
        return
    keep = {url for _, url in complete[-keep_last:]}
    newest = complete[-1][0]
    root = layout.checkpoints_url(output_url)
    for name in storage.list_dir(root):
        match = _STEP_DIR.match(name)
        url = storage.join(root, name)
        if match and url not in keep and int(match.group(1)) <= newest:
            storage.remove(url)


def remove_incomplete(output_url: str) -> list[str]:
    """Remove checkpoint folders without a marker: a writer died in them. Only call when
    no writer can be running (at the start of a training job)."""
    root = layout.checkpoints_url(output_url)
    removed = []
    for name in storage.list_dir(root):
        if _STEP_DIR.match(name) and not storage.exists(storage.join(root, name, MARKER)):
            storage.remove(storage.join(root, name))
            removed.append(name)
    return removed


@dataclass
class LoadedCheckpoint:
    url: str
    step: int
    model: GPT
    config: RunConfig
    tokenizer_bytes: bytes
    meta: dict


def is_model_zip(url: str) -> bool:
    return storage.normalize(url).endswith(".zip")


def resolve_checkpoint_url(url: str) -> str:
    """A checkpoint folder, a `model.zip`, or a run's output_url / checkpoints folder (its
    latest complete checkpoint, else its `model.zip`)."""
    url = storage.normalize(url)
    if is_model_zip(url):
        if not storage.exists(url):
            raise UserError(f"no model archive at {url}: check the path, or pass a checkpoint folder or a run's output_url")
        return url
    if storage.exists(storage.join(url, MARKER)):
        return url
    for root in (url, storage.join(url, "..") if url.endswith("checkpoints") else None):
        if root is None:
            continue
        complete = complete_checkpoints(storage.normalize(root))
        if complete:
            return complete[-1][1]
    if storage.exists(storage.join(url, MODEL_ZIP)):
        return storage.join(url, MODEL_ZIP)
    if storage.exists(storage.join(url, WEIGHTS)) or storage.exists(storage.join(url, PICKLED_WEIGHTS)):
        raise UserError(f"checkpoint {url} is incomplete (no {MARKER} marker): its writer stopped mid-way; use an earlier checkpoint")
    raise UserError(f"no complete checkpoint at {url}: pass a checkpoints/step-XXXXXXXX folder or a run's output_url")


def _corrupt(url: str, exc: Exception) -> UserError:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
    return UserError(f"checkpoint file {url} is corrupt or not a weights file ({first[:200]}): use another checkpoint")


def _load_tensors(url: str, data: bytes | None = None):
    """Tensors saved by torch.save at `url` (or given as `data`, read from `url` inside an archive)."""
    try:
        return torch.load(io.BytesIO(data) if data is not None else storage.bytes_io(url), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise _corrupt(url, exc) from None


def _load_weights(url: str, name: str, data: bytes, tie_weights: bool) -> dict[str, torch.Tensor]:
    """A model state dict from the weights file `name` (WEIGHTS or PICKLED_WEIGHTS) of the checkpoint at `url`."""
    file_url = storage.join(url, name)
    if name == PICKLED_WEIGHTS:
        return _load_tensors(file_url, data)
    try:
        state = safetensors.torch.load(data)
    except safetensors.SafetensorError as exc:
        raise _corrupt(file_url, exc) from None
    if tie_weights and TIED not in state and "wte.weight" in state:
        state[TIED] = state["wte.weight"]
    return state


def _weights_file(names) -> str | None:
    """The weights file to read among `names`: safetensors when there, else the pickled one."""
    return next((name for name in (WEIGHTS, PICKLED_WEIGHTS) if name in names), None)


def _folder_weights_file(url: str) -> str:
    return WEIGHTS if storage.exists(storage.join(url, WEIGHTS)) else PICKLED_WEIGHTS


def checkpoint_to_resume(output_url: str, resume: bool) -> tuple[int, str] | None:
    """(step, url) of the latest complete checkpoint, None if there is none."""
    complete = complete_checkpoints(output_url)
    if not complete:
        return None
    if not resume:
        # Training from scratch beside them would mix two runs' checkpoints, and the
        # older, later-numbered ones would pass for the newest.
        raise UserError(
            f"output_url {output_url} holds checkpoints of an earlier run (up to step {complete[-1][0]}) and train.resume=false: "
            "use a new output_url, or delete its checkpoints folder to start again"
        )
    return complete[-1]


def check_compatible(url: str, expected_model_args: dict, tokenizer_sha256: str | None = None) -> dict:
    """The checkpoint's meta, if its model arguments and tokenizer are the run's; else a
    UserError (loading it would fail on shapes or, worse, silently train another model,
    or read token ids that now mean other pieces)."""
    meta = storage.read_json(storage.join(url, "meta.json"))
    differing = {k: (v, expected_model_args.get(k)) for k, v in meta["model_args"].items() if expected_model_args.get(k) != v}
    if differing:
        detail = ", ".join(f"{k} {old} vs {new}" for k, (old, new) in sorted(differing.items()))
        raise UserError(f"checkpoint {url} was trained with other model settings ({detail}): use a new output_url for the new settings")
    if tokenizer_sha256 and hashlib.sha256(storage.read_bytes(storage.join(url, "tokenizer.model"))).hexdigest() != tokenizer_sha256:
        raise UserError(
            f"checkpoint {url} was trained with another tokenizer than the dataset's (the dataset was rebuilt since): "
            "use a new output_url, or delete its checkpoints folder to start again"
        )
    return meta


@dataclass
class TrainingState:
    meta: dict
    model: dict
    optimizer: dict | None
    rng_states: list[torch.Tensor] | None


def load_training_state(url: str, expected_model_args: dict, tokenizer_sha256: str | None = None) -> TrainingState:
    """Weights, optimizer state and RNG states of a compatible checkpoint to resume from."""
    meta = check_compatible(url, expected_model_args, tokenizer_sha256)

    def optional(name: str):
        file_url = storage.join(url, name)
        return _load_tensors(file_url) if storage.exists(file_url) else None

    weights = _folder_weights_file(url)
    model = _load_weights(url, weights, storage.read_bytes(storage.join(url, weights)), meta["model_args"].get("tie_weights", True))
    return TrainingState(meta, model, optional("optimizer.pt"), optional("rng.pt"))


def _read_model_zip(url: str) -> dict[str, bytes]:
    """The members of a model.zip that readers use, by name (one weights file: the
    preferred one); a UserError when one is missing or it is no zip."""
    try:
        with zipfile.ZipFile(storage.bytes_io(url)) as archive:
            names = set(archive.namelist())
            weights = _weights_file(names)
            missing = [name for name in ("meta.json", "tokenizer.model") if name not in names]
            if weights is None:
                missing.insert(0, f"{WEIGHTS} (or {PICKLED_WEIGHTS})")
            if missing:
                raise UserError(f"model archive {url} lacks {', '.join(missing)}: export it again with export_model_zip")
            files = {}
            for name in (weights, "meta.json", "tokenizer.model"):
                _check_size(url, name, archive.getinfo(name).file_size)
                with archive.open(name) as member:  # inflates to the declared size at most
                    files[name] = member.read(max_file_bytes() + 1)
                _check_size(url, name, len(files[name]))
            return files
    except (zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"model archive {url} is not a readable zip ({exc}): download or export it again") from None


def read_checkpoint_files(url: str) -> dict[str, bytes]:
    """meta.json, tokenizer.model and one weights file (model.safetensors where there is
    one, else model.pt) of a resolved checkpoint folder or model.zip, by name."""
    if is_model_zip(url):
        return _read_model_zip(url)
    weights = _folder_weights_file(url)
    names = (weights, "meta.json", "tokenizer.model")
    for name in names:
        _check_size(url, name, storage.size(storage.join(url, name)))
    return {name: storage.read_bytes(storage.join(url, name)) for name in names}


def load_checkpoint(url: str) -> LoadedCheckpoint:
    """Load a complete checkpoint or model.zip for inference (weights, config, tokenizer)."""
    url = resolve_checkpoint_url(url)
    return loaded_from_files(url, read_checkpoint_files(url))


def loaded_from_files(url: str, files: dict[str, bytes]) -> LoadedCheckpoint:
    """The checkpoint at the resolved `url`, from its files as read_checkpoint_files gives them."""
    meta = json.loads(files["meta.json"])
    check_model_args(url, meta.get("model_args"))
    model = GPT(GPTConfig(**meta["model_args"]))
    weights = _weights_file(files)
    state = _load_weights(url, weights, files[weights], model.config.tie_weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {url} does not match its model arguments ({str(exc).splitlines()[0]}): it is damaged") from None
    model.eval()
    return LoadedCheckpoint(
        url=url,
        step=int(meta["step"]),
        model=model,
        config=from_dict(meta["config"]),
        tokenizer_bytes=files["tokenizer.model"],
        meta=meta,
    )


def export_model_zip(checkpoint_url: str, zip_url: str) -> str:
    """Write the checkpoint at `checkpoint_url` (a folder, a run's output_url or another
    model.zip) as a model.zip at `zip_url`; return the checkpoint it came from."""
    source = resolve_checkpoint_url(checkpoint_url)
    files = read_checkpoint_files(source)
    # The file that is not there is made from the one that is: model.safetensors for a
    # checkpoint from before it; model.pt for the readers of a model.zip that predate it.
    weights = _weights_file(files)
    tie_weights = json.loads(files["meta.json"])["model_args"].get("tie_weights", True)
    state = _load_weights(source, weights, files[weights], tie_weights)
    files.setdefault(WEIGHTS, _safetensors_bytes(state))
    files.setdefault(PICKLED_WEIGHTS, _tensor_bytes(state))
    buffer = io.BytesIO()
    # Both weights files are raw floats, which deflate hardly shrinks: stored as they are.
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in ZIP_MEMBERS:
            stored = name in (WEIGHTS, PICKLED_WEIGHTS)
            archive.writestr(name, files[name], compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
    storage.write_bytes(zip_url, buffer.getvalue())
    return source

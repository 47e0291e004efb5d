"""The training worker: the one entry point of a rank, whatever started it.

`train_worker(config_values, launch_info)` runs under `horovod.spark.run` (one Spark
task per rank), under `horovodrun` (via `python -m horovod_llm.worker`), under Spark's
TorchDistributor (one torchrun per Spark task), each as a rank process
(launchers/rank_process.py), and in-process for a single rank. It
returns a small dict; weights and statistics go to storage. Its collectives go through
`comm.py`: Horovod, or torch.distributed under TorchDistributor.

It reads as Horovod's recipe (init, broadcast, distributed optimizer), then runs the
loop (`loop.py`, in nanoGPT's order). What the driver decides alike lives in `job.py`,
the per-step pieces in `step.py`, resumption in `resume.py`, the records, the summary
and end-of-run outputs in `stats.py`.
"""

from __future__ import annotations

import logging
import os
import sys
import time

import torch

from horovod_llm import launchers, layout, storage
from horovod_llm.config import RunConfig, from_dict, to_dict
from horovod_llm.data import embeddings
from horovod_llm.data.manifest import Manifest, read_manifest
from horovod_llm.launchers.secret_channel import SECRETS_AT_ENV, fetch_secrets
from horovod_llm.launchers.watchdog import Heartbeat
from horovod_llm.log import rank_logger, setup_logging
from horovod_llm.model import GPT
from horovod_llm.progress import is_terminal, wants_bars
from horovod_llm.storage import storage_settings
from horovod_llm.training import recipe
from horovod_llm.training.affinity import bind_rank, binds
from horovod_llm.training.allocator import keep_freed_memory
from horovod_llm.training.calibration import calibrate
from horovod_llm.training.comm import Collectives, cuda_unsupported, init_collectives
from horovod_llm.training.device import Placement
from horovod_llm.training.device import resolve as resolve_device
from horovod_llm.training.job import check_job, learning_rates, model_config, steps_per_epoch, threads_for_rank, total_steps
from horovod_llm.training.loop import Job, budget_seconds, train_loop
from horovod_llm.training.metrics import calibrated_peak_flops
from horovod_llm.training.precision import flush_denormals
from horovod_llm.training.resume import Resumed, data_position, restore_latest, set_rng_state
from horovod_llm.training.schedule import TrainingClock
from horovod_llm.training.step import distributed_optimizer

log = logging.getLogger(__name__)


def init_from_word2vec(model: GPT, output_url: str, manifest: Manifest) -> None:
    """Copy the dataset's Word2Vec matrix into the token embedding (rank 0)."""
    matrix = embeddings.load_matrix(layout.embeddings_url(output_url))
    model.init_token_embedding(torch.from_numpy(matrix))
    log.info("token embedding initialised from Word2Vec (coverage %.1f%%)", 100 * manifest.embeddings.coverage)


def with_secrets(config: RunConfig, secrets: dict) -> RunConfig:
    """The config with the values the launcher hid (redaction.secret_values) put back."""
    from omegaconf import OmegaConf

    return from_dict(OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(to_dict(config)), secrets)))


def _count_values(nested: dict) -> int:
    return sum(_count_values(v) if isinstance(v, dict) else 1 for v in nested.values())


def train_worker(config_values: dict, launch_info: dict | None = None) -> dict:
    """Train on this rank's shard; rank 0 writes checkpoints and statistics."""
    config = from_dict(config_values)
    # The credentials the launcher kept out of what it wrote or put on a command line.
    secrets_at = (launch_info or {}).get("secrets") or os.environ.get(SECRETS_AT_ENV)
    if secrets_at:
        received = fetch_secrets(secrets_at)
        config = with_secrets(config, received)
        # the summary's launch block says how many (never which) came this way
        launch_info = {**launch_info, "credentials_from_driver": _count_values(received)}
    # A rank's stdout may be the user's terminal (Spark local mode): it only logs, to
    # stderr, so that stdout carries nothing but generated text.
    sys.stdout = sys.stderr
    launcher = launchers.launcher(config.train.launcher)
    placement = place_rank(config.train.device, launcher)  # before anything starts CUDA
    comm = init_collectives(launcher.backend_name(), config.train, placement.device)  # the ranks meet
    beat = Heartbeat.from_launch(launch_info, comm.rank)
    beat("start")
    try:
        return _train_ranks(config, comm, launch_info or launcher.launch_info(), beat, placement)
    finally:
        comm.close()


def place_rank(setting: str, launcher) -> Placement:
    """This rank's device (training/device.py) and the GPUs Spark gave its task."""
    return resolve_device(setting, launcher.task_gpus(), collectives_problem=lambda: cuda_unsupported(launcher.backend_name()))


def peak_flops(train, precisions: list[str], threads: int, ranks_on_host: int, device) -> dict[str, tuple[float, str]]:
    """{precision: (peak FLOP/s of one rank, its source)} for each precision the rank may
    train in: the config's, or the best reading of this machine type (every rank
    measures at once, as they will compute)."""
    if train.peak_flops_per_rank:
        return {name: (train.peak_flops_per_rank, "train.peak_flops_per_rank") for name in precisions}
    return {name: calibrated_peak_flops(threads, ranks_on_host, precision=name, device=device) for name in precisions}


def prepare_rank_process(threads: int) -> None:
    """The process state a rank trains under (bench/bare_loop.py sets the same, so that
    its ceiling differs from a rank by the pipeline alone)."""
    flush_denormals()  # before torch's threads start: they inherit it (precision.py)
    torch.set_num_threads(threads)  # pin each rank to its share of the cores
    keep_freed_memory()  # a step's buffers stay mapped for the next step (allocator.py)


def _train_ranks(config: RunConfig, comm: Collectives, launch_info: dict, beat: Heartbeat, placement: Placement) -> dict:
    ranks_ready_at = time.time()  # wall clock (comparable with the driver's): stage timings
    rank, world_size = comm.rank, comm.size
    is_main = rank == 0
    setup_logging(config.log_level, rank, progress=wants_bars(config.progress, is_terminal(sys.stderr)))
    storage.use(storage_settings(config))
    out = config.output_url
    manifest = read_manifest(out)
    # The same recipe the driver resolved (under horovodrun, no driver did).
    config = recipe.resolve(config, manifest.corpus.bytes)
    train = config.train
    check_job(config, manifest, comm.mpi_built)
    threads = threads_for_rank(train.threads_per_rank, comm.local_size)
    # Before the rank's own threads start (the loader's, torch's pool): they inherit it.
    comm.cores = bind_rank(binds(train.bind_cores, comm.backend) and not comm.elastic, comm.local_rank, comm.local_size, threads)
    prepare_rank_process(threads)
    torch.manual_seed(train.seed)

    model = GPT(model_config(config, manifest))
    if is_main and config.model.init_from_word2vec:
        init_from_word2vec(model, out, manifest)  # reaches the other ranks by broadcast
    device = placement.device
    model.to(device)  # fp32 weights wherever it computes: autocast lowers only the arithmetic
    # train.precision=auto: this rank's fp32 and bf16 pass times (no collective here, so
    # that an elastic rank that joins late can run this alone); the loop's entry agrees
    # on the slowest rank's gain.
    calibration = calibrate(model, train.batch_size, device, threads, comm.local_size) if train.precision == "auto" else None
    # Optionally scale the learning rate with the number of ranks (Horovod's rule).
    max_lr, min_lr = learning_rates(train, world_size)
    optimizer = distributed_optimizer(model, train, max_lr, comm)
    tokenizer_sha = manifest.tokenizer.sha256
    if comm.elastic:
        # No collective before the elastic loop: a rank that joins later runs this
        # prologue alone while the others are inside the loop. Each rank reads the
        # checkpoint itself; the elastic loop's first sync then gives all of them rank
        # 0's state.
        resumed = restore_latest(out, model, optimizer, train.resume, tokenizer_sha, remove_partial=False)
    else:
        # Rank 0 finds the checkpoint to resume from and broadcasts its step; the weights
        # and optimizer state it loads reach the other ranks by the broadcast below.
        resumed = restore_latest(out, model, optimizer, train.resume, tokenizer_sha) if is_main else Resumed()
        resumed = comm.broadcast_object(resumed, name="resumed")
        comm.broadcast_model(model, optimizer)  # every rank starts from rank 0's state

    # Dropout masks differ across ranks (their data does too), and continue exactly
    # where a checkpoint left them when the world size is the same.
    torch.manual_seed(train.seed + 1 + rank)
    if resumed.rng_states is not None and len(resumed.rng_states) == world_size:
        set_rng_state(resumed.rng_states[rank], device)

    per_epoch = steps_per_epoch(manifest.splits["train"].windows, train.batch_size * train.backward_passes_per_step * world_size)
    steps = total_steps(train, per_epoch)
    done = TrainingClock(budget_seconds(train), synced_seconds=resumed.trained_seconds, synced_step=resumed.step)
    if (steps is not None and resumed.step >= steps) or done.spent(resumed.step):
        rank_logger(__name__, is_main).info(
            "the checkpoint at step %d (%.0f s of training) already completes the run asked for: nothing to train", resumed.step, resumed.trained_seconds
        )
        if not comm.elastic:
            comm.barrier()
        summary_url = storage.join(layout.stats_url(out), "summary.json")
        return {"rank": rank, "steps": resumed.step, **({"summary": storage.read_json(summary_url)} if is_main and storage.exists(summary_url) else {})}

    position = data_position(resumed, train.seed, world_size)
    if resumed.step and position.consumed == 0:
        rank_logger(__name__, is_main).warning("resuming on %d ranks from a checkpoint of another world size: the data order restarts", world_size)
    # MFU's denominator: the peak of the precision the loop trains in.
    peaks = peak_flops(train, ["fp32", "bf16"] if calibration else [train.precision], threads, comm.local_size, device)
    job = Job(
        config=config,
        manifest=manifest,
        tokenizer_bytes=storage.read_bytes(layout.tokenizer_url(out)),
        launch_info=launch_info,
        threads=threads,
        total_steps=steps,
        steps_per_epoch=per_epoch,
        max_lr=max_lr,
        min_lr=min_lr,
        peaks=peaks,
        device=device,
        spark_gpus=list(placement.spark_gpus),
        calibration=calibration,
        resumed_step=resumed.step,
        started=time.perf_counter(),
        ranks_ready_at=ranks_ready_at,
        comm=comm,
        beat=beat,
    )
    state = comm.loop_state(
        model,
        optimizer,
        step=resumed.step,
        trained_seconds=resumed.trained_seconds,
        data_seed=position.seed,
        consumed=position.consumed,
        reader_world=position.world_size,
    )
    summary = comm.run(train_loop, state, job)
    comm.barrier()  # no rank leaves while rank 0 still writes
    return {"rank": comm.rank, "steps": summary["steps"], **({"summary": summary} if comm.rank == 0 else {})}

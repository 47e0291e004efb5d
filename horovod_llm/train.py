"""The training worker: the one entry point of a rank, whatever started it.

`train_worker(config_values, launch_info)` runs under `horovod.spark.run` (one Spark
task per rank), under `horovodrun` (via `python -m horovod_llm.worker`), under Spark's
TorchDistributor (one torchrun per Spark task) and in-process for a single rank. It
returns a small dict; weights and statistics go to storage. Its collectives go through
`comm.py`: Horovod, or torch.distributed under TorchDistributor.

It reads as Horovod's recipe (init, broadcast, distributed optimizer) and then the loop. What the
driver decides alike lives in `job.py`, the per-step pieces in `step.py`, resumption in
`resume.py`, the statistics and end-of-run outputs in `stats.py`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import torch

from horovod_llm import checkpoint, dataset, embeddings, layout, recipe, storage
from horovod_llm.comm import Collectives, backend_for, init_collectives, lost_peer
from horovod_llm.config import RunConfig, apply_storage, from_dict, with_secrets
from horovod_llm.errors import UserError
from horovod_llm.job import check_job, learning_rates, model_config, steps_per_epoch, threads_for_rank, total_steps
from horovod_llm.log import rank_logger, setup_logging
from horovod_llm.manifest import Manifest, read_manifest
from horovod_llm.metrics import calibrated_peak_flops, model_flops_utilisation, peak_rss_mb
from horovod_llm.model import GPT
from horovod_llm.progress import is_terminal, training_bar, training_fraction, wants_bars
from horovod_llm.rank_failures import PEER_LOST_GRACE_S, PEER_LOST_STATUS, USER_ERROR_STATUS
from horovod_llm.resume import Resumed, data_position, restore_latest
from horovod_llm.schedule import TrainingClock, learning_rate_at
from horovod_llm.secret_channel import SECRETS_AT_ENV, fetch_secrets
from horovod_llm.stats import NullStats, StatsWriter, write_run_outputs
from horovod_llm.step import Interval, distributed_optimizer, train_step, validate
from horovod_llm.watchdog import Heartbeat

log = logging.getLogger(__name__)


def init_from_word2vec(model: GPT, output_url: str, manifest: Manifest) -> None:
    """Copy the dataset's Word2Vec matrix into the token embedding (rank 0)."""
    matrix = embeddings.load_matrix(layout.embeddings_url(output_url))
    model.init_token_embedding(torch.from_numpy(matrix))
    log.info("token embedding initialised from Word2Vec (coverage %.1f%%)", 100 * manifest.embeddings.coverage)


def rank_entry(config_values: dict, launch_info: dict | None = None) -> dict:
    """`train_worker` for a rank process: a user error ends it with its message on one
    line and exit status 2 (the launcher then stops the other ranks), not a traceback; a
    rank that only lost a peer exits with PEER_LOST_STATUS, so that the launcher names
    the rank that failed first (rank_failures.py)."""
    try:
        return train_worker(config_values, launch_info)
    except UserError as exc:
        log.error("error: %s", exc)
        _exit_now(USER_ERROR_STATUS)
    except Exception as exc:
        if not lost_peer(exc):
            raise
        log.error("stopping: a collective failed because another rank was lost (%s)", str(exc).strip().splitlines()[0][:200])
        if (launch_info or {}).get("launcher") == "torch_distributor":
            # Spark reports the first of a barrier stage's tasks to fail and stops the
            # others: waiting lets the rank that failed on its own be that one.
            time.sleep(PEER_LOST_GRACE_S)
        _exit_now(PEER_LOST_STATUS)


def _count_values(nested: dict) -> int:
    return sum(_count_values(v) if isinstance(v, dict) else 1 for v in nested.values())


def _exit_now(status: int) -> NoReturn:
    """End this rank process at once, its output flushed. An orderly interpreter exit
    would first run Horovod's exit handler, whose shutdown tells the other ranks: they
    then exited (as having lost a peer) before this one, and the launcher, seeing them
    first, stopped this rank with SIGTERM and named the wrong one. Everything this rank
    wrote is already whole (storage writes are atomic)."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _format_eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


@dataclass
class Job:
    """What every (re)entry of the training loop needs; fixed for the whole job."""

    config: RunConfig
    manifest: Manifest
    tokenizer_bytes: bytes
    launch_info: dict
    threads: int
    total_steps: int | None  # None: only the wall-clock budget ends the run
    steps_per_epoch: int
    max_lr: float
    min_lr: float
    peak_per_rank: float
    peak_source: str  # measured, calibrated (an earlier, better reading) or the config
    resumed_step: int
    started: float
    ranks_ready_at: float  # wall clock after the ranks met: stage timings
    comm: Collectives
    beat: Heartbeat  # progress reports to the driver's watchdog
    # Elastic: this rank's clock (perf_counter) at its last commit. Not part of the
    # state, so a reset does not roll it back: the time since, lost to the reset and to
    # the steps it undid, still counts against the budget.
    committed_at: float | None = None


class LoopState:
    """The mutable part of training, the same fields as the elastic TorchState: the
    step, and the data position (the reader's seed and world size, batches consumed)."""

    def __init__(self, model: GPT, optimizer, **fields):
        self.model, self.optimizer = model, optimizer
        self.__dict__.update(fields)

    def commit(self) -> None:
        """Nothing to do: without elastic mode no reset ever rolls back to a commit."""


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
    comm = init_collectives(backend_for(config.train.launcher), config.train)  # the ranks meet
    beat = Heartbeat.from_launch(launch_info, comm.rank)
    beat("start")
    try:
        return _train_ranks(config, comm, launch_info, beat)
    finally:
        comm.close()


def _train_ranks(config: RunConfig, comm: Collectives, launch_info: dict | None, beat: Heartbeat) -> dict:
    ranks_ready_at = time.time()  # wall clock (comparable with the driver's): stage timings
    rank, world_size = comm.rank, comm.size
    is_main = rank == 0
    setup_logging(config.log_level, rank, progress=wants_bars(config.progress, is_terminal(sys.stderr)))
    apply_storage(config)
    out = config.output_url
    manifest = read_manifest(out)
    # The same recipe the driver resolved (under horovodrun, no driver did).
    config = recipe.resolve(config, manifest.corpus.bytes)
    train = config.train
    check_job(config, manifest, comm.mpi_built)
    threads = threads_for_rank(train.threads_per_rank, comm.local_size)
    torch.set_num_threads(threads)  # pin each rank to its share of the cores
    torch.manual_seed(train.seed)

    model = GPT(model_config(config, manifest))
    if is_main and config.model.init_from_word2vec:
        init_from_word2vec(model, out, manifest)  # reaches the other ranks by broadcast
    # Optionally scale the learning rate with the number of ranks (Horovod's rule).
    max_lr, min_lr = learning_rates(train, world_size)
    optimizer = distributed_optimizer(model, train, max_lr, comm)
    tokenizer_sha = manifest.tokenizer.sha256
    if train.elastic:
        # No collective before elastic.run: a rank that joins later runs this prologue
        # alone while the others are inside the loop. Each rank reads the checkpoint
        # itself; elastic.run's first sync then gives all of them rank 0's state.
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
        torch.set_rng_state(resumed.rng_states[rank])

    per_epoch = steps_per_epoch(manifest.splits["train"].windows, train.batch_size * train.backward_passes_per_step * world_size)
    steps = total_steps(train, per_epoch)
    budget_seconds = 60.0 * train.max_minutes
    if (steps is not None and resumed.step >= steps) or (budget_seconds and resumed.trained_seconds >= budget_seconds):
        rank_logger(__name__, is_main).info(
            "the checkpoint at step %d (%.0f s of training) already completes the run asked for: nothing to train", resumed.step, resumed.trained_seconds
        )
        if not train.elastic:
            comm.barrier()
        summary_url = storage.join(layout.stats_url(out), "summary.json")
        return {"rank": rank, "steps": resumed.step, **({"summary": storage.read_json(summary_url)} if is_main and storage.exists(summary_url) else {})}

    position = data_position(resumed, train.seed, world_size)
    if resumed.step and position.consumed == 0:
        rank_logger(__name__, is_main).warning("resuming on %d ranks from a checkpoint of another world size: the data order restarts", world_size)
    # The fp32 peak MFU is measured against: the config's, or the best reading of this
    # machine type (every rank measures at once, as they will compute).
    if train.peak_flops_per_rank:
        peak_per_rank, peak_source = train.peak_flops_per_rank, "train.peak_flops_per_rank"
    else:
        peak_per_rank, peak_source = calibrated_peak_flops(threads, comm.local_size)
    job = Job(
        config=config,
        manifest=manifest,
        tokenizer_bytes=storage.read_bytes(layout.tokenizer_url(out)),
        launch_info=launch_info or {"launcher": "unknown"},
        threads=threads,
        total_steps=steps,
        steps_per_epoch=per_epoch,
        max_lr=max_lr,
        min_lr=min_lr,
        peak_per_rank=peak_per_rank,
        peak_source=peak_source,
        resumed_step=resumed.step,
        started=time.perf_counter(),
        ranks_ready_at=ranks_ready_at,
        comm=comm,
        beat=beat,
    )
    fields = {
        "step": resumed.step,
        "trained_seconds": resumed.trained_seconds,
        "data_seed": position.seed,
        "consumed": position.consumed,
        "reader_world": position.world_size,
    }
    if train.elastic:
        # Horovod elastic: ranks may leave and join; on a change every rank rolls back
        # to the last commit (in memory) and the loop starts again at the new size.
        state = comm.elastic.TorchState(model=model, optimizer=optimizer, **fields)
        summary = comm.elastic.run(train_loop)(state, job)
    else:
        summary = train_loop(LoopState(model, optimizer, **fields), job)
    comm.barrier()  # no rank leaves while rank 0 still writes
    return {"rank": comm.rank, "steps": summary["steps"], **({"summary": summary} if comm.rank == 0 else {})}


def train_loop(state, job: Job) -> dict:
    """The steps from `state.step` to the end, at the current world size; the summary."""
    config, train, manifest, comm = job.config, job.config.train, job.manifest, job.comm
    out, model, optimizer = config.output_url, state.model, state.optimizer
    rank, world_size = comm.rank, comm.size
    is_main = rank == 0
    job.beat.rank = rank  # elastic: a reset may have re-ranked this process
    job.beat("loop", state.step)
    progress = rank_logger(__name__, is_main)  # the other ranks log warnings and errors only
    micro = train.backward_passes_per_step
    tokens_per_step = train.batch_size * micro * manifest.window_size * world_size

    def allreduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        return comm.allreduce(tensor, "sum", name="metrics_sum")

    if state.reader_world != world_size:  # elastic: the shards changed, so does the order
        state.data_seed, state.consumed, state.reader_world = train.seed + state.step, 0, world_size
    if train.elastic:
        # After a reset, the wall time since the last commit (a rank that just joined has
        # none: the max across ranks) is spent cluster time: a budget counts it.
        lost = 0.0 if job.committed_at is None else time.perf_counter() - job.committed_at
        lost = float(comm.allreduce(torch.tensor([lost], dtype=torch.float64), "max", name="lost_seconds")[0])
        if lost:
            state.trained_seconds += lost
            progress.warning("resuming at step %d after a reset: the %.1f s since the last commit count against the budget", state.step, lost)
    peak_flops = float(allreduce_sum(torch.tensor([job.peak_per_rank], dtype=torch.float64))[0])
    # Where the ranks run: host names, and the interface Gloo was given ("lo" locally);
    # in stats/placement.json from the start (again after an elastic reset), so that the
    # host of each rank is known while it trains.
    mine = {"host": socket.gethostname(), "gloo_iface": os.environ.get("HOROVOD_GLOO_IFACE") or os.environ.get("GLOO_SOCKET_IFNAME")}
    placement = [{"rank": r, **p} for r, p in enumerate(comm.allgather_object(mine, name="placement"))]
    if is_main:
        storage.write_json(storage.join(layout.stats_url(out), "placement.json"), {"step": state.step, "ranks": placement})
    flops_per_token = model.flops_per_token()
    stats = StatsWriter(out) if is_main else NullStats()
    stats.resume(state.step)
    budget = 60.0 * train.max_minutes
    clock = TrainingClock(budget, synced_seconds=state.trained_seconds, synced_step=state.step)
    ends = f"step {job.total_steps}" if job.total_steps else "the budget"
    if budget:
        ends += f" or {train.max_minutes:g} minutes of training" if job.total_steps else f" ({train.max_minutes:g} minutes of training)"
    progress.info(
        "training %.2fM parameters on %d rank(s) x %d thread(s): from step %d to %s (%d steps per epoch), %d tokens per step, peak %.0f GFLOP/s",
        model.num_parameters() / 1e6, world_size, job.threads, state.step + 1, ends, job.steps_per_epoch, tokens_per_step, peak_flops / 1e9,
    )  # fmt: skip

    entered = epoch_started = time.perf_counter()
    loop_started_at = time.time()  # wall clock, comparable with the driver's: stage timings
    entry_step, entry_seconds = state.step, state.trained_seconds
    interval, epoch_loss = Interval(), torch.zeros(2, dtype=torch.float64)  # epoch: summed loss, steps
    last_eval: dict = {}
    checkpoint_url = None
    mfu_values: list[float] = []
    model.train()
    batches_args = (out, "train", rank, world_size, train.batch_size)
    last = False
    with (
        storage.storage_errors_as(out),
        dataset.window_batches(*batches_args, num_epochs=None, seed=state.data_seed, shuffle=True, skip_batches=state.consumed) as batches,
        training_bar(is_main and wants_bars(config.progress, is_terminal(sys.stderr)), job.total_steps) as bar,
    ):
        while not last:
            step = state.step + 1
            epoch = (step - 1) // job.steps_per_epoch
            lr = learning_rate_at(
                step,
                max_lr=job.max_lr,
                min_lr=job.min_lr,
                warmup_steps=train.warmup_steps,
                total_steps=job.total_steps,
                elapsed_fraction=clock.fraction(step - 1),
            )
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_started = time.perf_counter()
            result = train_step(model, optimizer, [torch.from_numpy(next(batches)) for _ in range(micro)], train.grad_clip)
            state.step, state.consumed = step, state.consumed + micro
            # Step time covers loading, compute and allreduce, not evaluation or checkpoints.
            interval.add(result, time.perf_counter() - step_started)
            job.beat("step", step)
            epoch_loss += torch.tensor([result.loss, 1.0], dtype=torch.float64)
            # Every rank decides alike: from the step count and the synced clock.
            last = step == job.total_steps or clock.spent(step)

            end_of_epoch = step % job.steps_per_epoch == 0 or last
            if step % train.log_interval == 0 or end_of_epoch:
                loss_x_tokens, correct, tokens, steps_done, _, sync = allreduce_sum(interval.sums).tolist()
                # The slowest rank sets the pace of a synchronous step, and the clock.
                mine = [float(interval.sums[4]), peak_rss_mb(), entry_seconds + time.perf_counter() - entered]
                elapsed, rss, trained = comm.allreduce(torch.tensor(mine, dtype=torch.float64), "max", name="max_time_rss").tolist()
                steps_done /= world_size
                clock.sync(step, trained, elapsed / steps_done)
                tokens_per_s = tokens_per_step * steps_done / elapsed
                record = {
                    "step": step,
                    "epoch": epoch,
                    "loss": loss_x_tokens / tokens,
                    "accuracy": correct / tokens,
                    "grad_norm": result.grad_norm,
                    "lr": lr,
                    "step_time_s": elapsed / steps_done,
                    "tokens_per_s": tokens_per_s,
                    # model FLOP/s, and its share of the fp32 matmul peak
                    "model_flops_per_s": flops_per_token * tokens_per_s,
                    "mfu": model_flops_utilisation(flops_per_token, tokens_per_s, peak_flops),
                    # mean over ranks of the time spent waiting for gradients to be reduced
                    "allreduce_share": sync / world_size / elapsed,
                    "peak_rss_mb": rss,
                    "ranks": world_size,
                    "trained_seconds": trained,
                    "time": time.time(),  # rank 0's wall clock (Unix seconds)
                }
                mfu_values.append(record["mfu"])
                stats.log_step(record)
                bar.set_loss(record["loss"])
                progress.info(
                    "step %d%s | epoch %d | loss %.4f | acc %.3f | grad %.2f | lr %.2e | %.0f tok/s | mfu %.0f%% | %s",
                    step, f"/{job.total_steps}" if job.total_steps else "", epoch, record["loss"], record["accuracy"], result.grad_norm, lr,
                    tokens_per_s, 100 * record["mfu"], _remaining(clock, step, job.total_steps, (time.perf_counter() - entered) / (step - entry_step)),
                )  # fmt: skip
                interval.reset()
            # Between the step lines, rank 0's bar (on a terminal) counts down as they do.
            remaining = _remaining(clock, step, job.total_steps, (time.perf_counter() - entered) / (step - entry_step))
            bar.show(step, training_fraction(step, job.total_steps, clock.fraction(step)), remaining, force=last)

            if (train.eval_interval and step % train.eval_interval == 0) or end_of_epoch:
                last_eval = validate(
                    model, job.tokenizer_bytes, out, manifest.overlap, rank, world_size, train.batch_size, train.eval_max_batches, allreduce_sum
                )
                stats.log_eval({"step": step, "epoch": epoch, **last_eval})
                job.beat("eval", step)
                progress.info(
                    "step %d | val loss %.4f | val ppl %.1f | val acc %.3f | val nats/char %.3f",
                    step, last_eval["val_loss"], last_eval["val_perplexity"], last_eval["val_accuracy"], last_eval["val_nats_per_character"],
                )  # fmt: skip
            if end_of_epoch:
                epoch_totals = allreduce_sum(epoch_loss)
                epoch_record = {"epoch": epoch, "step": step, "seconds": time.perf_counter() - epoch_started}
                stats.log_epoch({**epoch_record, "train_loss": float(epoch_totals[0] / epoch_totals[1]), **last_eval})
                epoch_loss.zero_()
                epoch_started = time.perf_counter()

            if (train.checkpoint_interval and step % train.checkpoint_interval == 0) or last:
                # A collective, so every rank takes part; rank 0 writes.
                rng_states = comm.allgather_object(torch.get_rng_state(), name="rng_states")
                if is_main:
                    data = {"seed": state.data_seed, "world_size": world_size, "batches_consumed": state.consumed}
                    meta = {"epoch": epoch, "metrics": last_eval, "dataset": manifest.fingerprint, "data": data, "trained_seconds": clock.seconds_at(step)}
                    checkpoint_url = checkpoint.save_checkpoint(out, step, model, optimizer, config, job.tokenizer_bytes, meta, rng_states)
                    checkpoint.prune_checkpoints(out, train.keep_last)
                    progress.info("checkpoint written: %s", checkpoint_url)
                job.beat("checkpoint", step)
            if train.elastic and (step % train.elastic_commit_interval == 0 or last):
                state.trained_seconds = clock.seconds_at(step)
                job.committed_at = time.perf_counter()
                stats.flush()  # a new rank 0 after a reset continues from these records
                state.commit()  # Horovod elastic: the point a reset rolls back to

    total_seconds = time.perf_counter() - job.started
    steps_run = state.step - job.resumed_step
    timeline = {"ranks_ready_at": job.ranks_ready_at, "loop_started_at": loop_started_at, "loop_ended_at": time.time()}
    summary = {
        "steps": state.step,
        "stopped_by": "steps" if state.step == job.total_steps else "budget",
        "trained_seconds": clock.seconds_at(state.step),
        "budget_seconds": budget,
        "resumed_from_step": job.resumed_step,
        "epochs": math.ceil(state.step / job.steps_per_epoch),
        "steps_per_epoch": job.steps_per_epoch,
        "ranks": world_size,
        "threads_per_rank": job.threads,
        "launch": job.launch_info,
        "placement": placement,
        "backend": comm.backend,
        # the reduction's settings (Horovod's, which torch.distributed follows but for the cycle time)
        "horovod": {
            "compression": "fp16" if train.fp16_allreduce else "none",
            "op": train.allreduce_op,
            "backward_passes_per_step": micro,
            "lr_scaled_by_ranks": train.scale_lr_by_ranks,
            "elastic": train.elastic,
            "cycle_time_ms": float(os.environ["HOROVOD_CYCLE_TIME"]) if comm.backend == "horovod" else None,
        },
        "global_batch_windows": train.batch_size * micro * world_size,
        "tokens_per_step": tokens_per_step,
        "total_seconds": total_seconds,
        "tokens_per_s": tokens_per_step * steps_run / total_seconds,
        "peak_flops": peak_flops,
        "peak_source": job.peak_source,
        "model_flops_per_s": flops_per_token * tokens_per_step * steps_run / total_seconds,
        "mfu_mean": float(np.nanmean(mfu_values)) if mfu_values else float("nan"),
        "parameters": model.num_parameters(),
        "flops_per_token": flops_per_token,
        "final": last_eval,
        "checkpoint_url": checkpoint_url,
        "timeline": timeline,
    }
    if is_main:
        write_run_outputs(stats, summary, checkpoint_url, out)
    job.beat("done", state.step)
    return summary


def _remaining(clock: TrainingClock, step: int, total_steps: int | None, seconds_per_step: float) -> str:
    """The log's countdown: the budget left, or an estimate from the steps left."""
    if clock.budget_seconds:
        return f"{_format_eta(max(clock.budget_seconds - clock.seconds_at(step), 0.0))} of budget left"
    return f"eta {_format_eta(seconds_per_step * (total_steps - step))}"

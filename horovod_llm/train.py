"""The training worker: the one entry point of a rank, whatever started it.

`train_worker(config_values, launch_info)` runs under `horovod.spark.run` (one Spark
task per rank), under `horovodrun` (via `python -m horovod_llm.worker`) and in-process
for a single rank. It returns a small dict; weights and statistics go to storage.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from horovod_llm import checkpoint, dataset, embeddings, layout, storage
from horovod_llm.config import RunConfig, TrainConfig, apply_storage, from_dict
from horovod_llm.errors import UserError
from horovod_llm.log import setup_logging
from horovod_llm.metrics import batch_metrics, calibrated_peak_flops, model_flops_utilisation, peak_rss_mb
from horovod_llm.model import GPT, GPTConfig
from horovod_llm.plots import write_curves
from horovod_llm.rank_failures import PEER_LOST_STATUS, USER_ERROR_STATUS
from horovod_llm.schedule import learning_rate_at
from horovod_llm.stats import NullStats, StatsWriter
from horovod_llm.tokenizer import PAD_ID

log = logging.getLogger(__name__)


def model_config(config: RunConfig, manifest: dict) -> GPTConfig:
    """The model for a dataset: its vocabulary and window size, the config's shape."""
    return gpt_config(config, manifest["tokenizer"]["vocab_size"], manifest["window_size"])


def gpt_config(config: RunConfig, vocab_size: int, block_size: int) -> GPTConfig:
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
    )


def threads_for_rank(configured: int, local_size: int) -> int:
    """Torch threads per rank: as configured, else this host's cores shared by its ranks
    (more would oversubscribe the cores: 2 ranks x N threads on N cores)."""
    if configured > 0:
        return configured
    return max(1, (os.cpu_count() or 1) // max(local_size, 1))


# Marks HOROVOD_CYCLE_TIME as set from a config, not by the user: an earlier run in the
# same process (the local launcher, a notebook) or in a parent (ranks inherit the
# driver's environment) must not pin its value on the next run's config.
_CYCLE_TIME_FROM_CONFIG = "HOROVOD_LLM_CYCLE_TIME_FROM_CONFIG"


def set_horovod_environment(tc: TrainConfig) -> None:
    """Horovod's settings read from the environment at hvd.init(); a value the user (or
    horovodrun's --cycle-time-ms) set wins over the config."""
    current = os.environ.get("HOROVOD_CYCLE_TIME")
    if current is None or current == os.environ.get(_CYCLE_TIME_FROM_CONFIG):
        os.environ["HOROVOD_CYCLE_TIME"] = os.environ[_CYCLE_TIME_FROM_CONFIG] = str(tc.horovod_cycle_time_ms)


def check_word2vec_available(config: RunConfig, manifest: dict) -> None:
    if config.model.init_from_word2vec and not manifest.get("embeddings"):
        raise UserError(
            "model.init_from_word2vec=true but the dataset has no Word2Vec vectors: "
            "re-run preprocess with embedding.word2vec.enabled=true, or set model.init_from_word2vec=false"
        )


def check_allreduce_op(op: str, hvd) -> None:
    # Horovod implements Adasum on CPU with MPI only; this stack builds Gloo alone.
    if op == "adasum" and not hvd.mpi_built():
        raise UserError("train.allreduce_op=adasum needs Horovod built with MPI (this build has Gloo only): set train.allreduce_op=average")


def distributed_optimizer(model: GPT, tc: TrainConfig, learning_rate: float, hvd):
    """AdamW with weight-decay groups, wrapped by Horovod with the configured options."""
    optimizer = torch.optim.AdamW(model.param_groups(tc.weight_decay), lr=learning_rate, betas=(0.9, 0.95))
    # Horovod: average gradients across ranks with ring-allreduce.
    return hvd.DistributedOptimizer(
        optimizer,
        named_parameters=model.named_parameters(),
        compression=hvd.Compression.fp16 if tc.fp16_allreduce else hvd.Compression.none,
        backward_passes_per_step=tc.backward_passes_per_step,
        op=hvd.Adasum if tc.allreduce_op == "adasum" else hvd.Average,
    )


@dataclass
class StepResult:
    loss: float  # mean over the step's micro-batches
    correct: float
    tokens: float
    grad_norm: float  # of the averaged gradient, before clipping
    sync_seconds: float  # waiting for the allreduce after the last backward pass


def train_step(model: GPT, optimizer, micro_batches: list[torch.Tensor], grad_clip: float) -> StepResult:
    """One optimizer step over `backward_passes_per_step` micro-batches of (B, T+1) ids."""
    optimizer.zero_grad()
    loss_sum = correct = tokens = 0.0
    for ids in micro_batches:
        inputs, targets = ids[:, :-1], ids[:, 1:]
        logits, loss = model(inputs, targets)
        # Horovod averages over ranks; dividing by the micro-batch count averages over them.
        (loss / len(micro_batches)).backward()
        loss_sum += loss.item()
        c, t = batch_metrics(logits.detach(), targets)
        correct, tokens = correct + c, tokens + t
    # Horovod: finish the allreduce before clipping, so every rank clips the same averaged
    # gradient, then step without a second synchronisation.
    sync_started = time.perf_counter()
    optimizer.synchronize()
    sync_seconds = time.perf_counter() - sync_started
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip or float("inf")))
    with optimizer.skip_synchronize():
        optimizer.step()
    return StepResult(loss_sum / len(micro_batches), correct, tokens, grad_norm, sync_seconds)


@torch.no_grad()
def validate(model: GPT, output_url: str, rank: int, world_size: int, batch_size: int, max_batches: int, allreduce_sum) -> dict:
    """Validation loss, perplexity and token accuracy over every rank's shard.

    Each rank reads its own shard once (shards may differ in size); only the final
    sums cross ranks, so an uneven shard cannot stall a collective.
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64)  # summed loss (nats), correct, tokens
    with dataset.window_batches(output_url, "val", rank, world_size, batch_size, num_epochs=1, seed=0, shuffle=False) as batches:
        for index, batch in enumerate(batches):
            if max_batches and index >= max_batches:
                break
            ids = torch.from_numpy(batch)
            logits, loss = model(ids[:, :-1], ids[:, 1:])
            correct, tokens = batch_metrics(logits, ids[:, 1:])
            sums += torch.tensor([float(loss) * tokens, correct, tokens], dtype=torch.float64)
    model.train()
    loss_sum, correct, tokens = allreduce_sum(sums).tolist()
    if tokens == 0:
        return {"val_loss": float("nan"), "val_perplexity": float("nan"), "val_accuracy": float("nan"), "val_tokens": 0}
    val_loss = loss_sum / tokens
    return {"val_loss": val_loss, "val_perplexity": math.exp(min(val_loss, 50.0)), "val_accuracy": correct / tokens, "val_tokens": int(tokens)}


def init_from_word2vec(model: GPT, output_url: str, manifest: dict) -> None:
    """Copy the dataset's Word2Vec matrix into the token embedding (rank 0)."""
    matrix = embeddings.load_matrix(layout.embeddings_url(output_url))
    model.init_token_embedding(torch.from_numpy(matrix))
    log.info("token embedding initialised from Word2Vec (coverage %.1f%%)", 100 * manifest["embeddings"]["coverage"])


@dataclass
class Resumed:
    step: int = 0
    rng_states: list | None = None  # every rank's torch RNG state at that step
    data: dict | None = None  # the data position: seed, world size, batches consumed


def restore_latest(output_url: str, model: GPT, optimizer, resume: bool, tokenizer_sha256: str, remove_partial: bool = True) -> Resumed:
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
    return Resumed(step, state.rng_states, state.meta.get("data"))


@contextmanager
def storage_errors_as(url: str):
    """Storage failures surfacing from the data reader (Petastorm, pyarrow) or a
    checkpoint write, as one-line StorageErrors."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        translated = storage.storage_error(exc, url)
        if translated is None:
            raise
        raise translated from exc


def rank_entry(config_values: dict, launch_info: dict | None = None) -> dict:
    """`train_worker` for a rank process: a user error ends it with its message on one
    line and exit status 2 (Horovod then stops the other ranks), not a traceback; a
    rank that only lost a peer exits with PEER_LOST_STATUS, so that the launcher names
    the rank that failed first (rank_failures.py)."""
    from horovod.common.exceptions import HorovodInternalError

    try:
        return train_worker(config_values, launch_info)
    except UserError as exc:
        log.error("error: %s", exc)
        sys.stderr.flush()
        sys.exit(USER_ERROR_STATUS)
    except HorovodInternalError as exc:
        log.error("stopping: a collective failed because another rank was lost (%s)", str(exc).strip().splitlines()[0][:200])
        sys.stderr.flush()
        sys.exit(PEER_LOST_STATUS)


def _format_eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"


class Interval:
    """Sums over the steps between two log lines, reduced across ranks when logged."""

    def __init__(self):
        self.sums = torch.zeros(6, dtype=torch.float64)  # loss*tokens, correct, tokens, steps, seconds, sync seconds

    def add(self, result: StepResult, seconds: float) -> None:
        values = [result.loss * result.tokens, result.correct, result.tokens, 1.0, seconds, result.sync_seconds]
        self.sums += torch.tensor(values, dtype=torch.float64)

    def reset(self) -> None:
        self.sums.zero_()


@dataclass
class Job:
    """What every (re)entry of the training loop needs; fixed for the whole job."""

    config: RunConfig
    manifest: dict
    tokenizer_bytes: bytes
    launch_info: dict
    threads: int
    total_steps: int
    steps_per_epoch: int
    max_lr: float
    min_lr: float
    peak_per_rank: float
    peak_source: str  # measured, calibrated (an earlier, better reading) or the config
    resumed_step: int
    started: float
    ranks_ready_at: float  # wall clock after hvd.init(): stage timings


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
    import horovod.torch as hvd

    config = from_dict(config_values)
    # A rank's stdout may be the user's terminal (Spark local mode): it only logs, to
    # stderr, so that stdout carries nothing but generated text.
    sys.stdout = sys.stderr
    set_horovod_environment(config.train)
    hvd.init()  # Horovod: initialise the ranks
    ranks_ready_at = time.time()  # wall clock (comparable with the driver's): stage timings
    rank, world_size = hvd.rank(), hvd.size()
    is_main = rank == 0
    setup_logging(config.log_level, rank)
    apply_storage(config)
    tc = config.train
    check_allreduce_op(tc.allreduce_op, hvd)
    threads = threads_for_rank(tc.threads_per_rank, hvd.local_size())
    torch.set_num_threads(threads)  # Horovod: pin each rank to its share of the cores
    torch.manual_seed(tc.seed)

    out = config.output_url
    manifest = dataset.read_manifest(out)
    check_word2vec_available(config, manifest)
    model = GPT(model_config(config, manifest))
    if is_main and config.model.init_from_word2vec:
        init_from_word2vec(model, out, manifest)  # reaches the other ranks by broadcast
    # Horovod: optionally scale the learning rate with the number of ranks.
    lr_scale = world_size if tc.scale_lr_by_ranks else 1
    optimizer = distributed_optimizer(model, tc, tc.learning_rate * lr_scale, hvd)
    tokenizer_sha = manifest["tokenizer"]["sha256"]
    if tc.elastic:
        # No collective before hvd.elastic.run: a rank that joins later runs this prologue
        # alone while the others are inside the loop. Each rank reads the checkpoint
        # itself; elastic.run's first sync then gives all of them rank 0's state.
        resumed = restore_latest(out, model, optimizer, tc.resume, tokenizer_sha, remove_partial=False)
    else:
        # Horovod: rank 0 finds the checkpoint to resume from and broadcasts its step; the
        # weights and optimizer state it loads reach the other ranks by the broadcasts below.
        resumed = restore_latest(out, model, optimizer, tc.resume, tokenizer_sha) if is_main else Resumed()
        resumed = hvd.broadcast_object(resumed, root_rank=0, name="resumed")
        # Horovod: every rank starts from rank 0's weights and optimizer state.
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(optimizer, root_rank=0)

    # Dropout masks differ across ranks (their data does too), and continue exactly
    # where a checkpoint left them when the world size is the same.
    torch.manual_seed(tc.seed + 1 + rank)
    if resumed.rng_states is not None and len(resumed.rng_states) == world_size:
        torch.set_rng_state(resumed.rng_states[rank])

    micro = tc.backward_passes_per_step
    steps_per_epoch = dataset.steps_per_epoch(manifest["splits"]["train"]["windows"], tc.batch_size * micro, world_size)
    total_steps = tc.max_steps or tc.epochs * steps_per_epoch
    if resumed.step >= total_steps:
        if is_main:
            log.info("the checkpoint at step %d already completes the %d steps asked for: nothing to train", resumed.step, total_steps)
        if not tc.elastic:
            hvd.barrier()
        summary_url = storage.join(layout.stats_url(out), "summary.json")
        return {"rank": rank, "steps": resumed.step, **({"summary": storage.read_json(summary_url)} if is_main and storage.exists(summary_url) else {})}

    # Replay the data order after a resume: same seed, skip what was consumed. With
    # another world size the shards differ, so a fresh order is the honest choice.
    data_seed, consumed, reader_world = tc.seed, 0, world_size
    if resumed.data and resumed.data.get("world_size") == world_size:
        data_seed, consumed = resumed.data["seed"], resumed.data["batches_consumed"]
    elif resumed.step:
        data_seed = tc.seed + resumed.step
        if is_main:
            log.warning("resuming on %d ranks from a checkpoint of another world size: the data order restarts", world_size)
    # The fp32 peak MFU is measured against: the config's, or the best reading of this
    # machine type (every rank measures at once, as they will compute).
    if tc.peak_flops_per_rank:
        peak_per_rank, peak_source = tc.peak_flops_per_rank, "train.peak_flops_per_rank"
    else:
        peak_per_rank, peak_source = calibrated_peak_flops(threads, hvd.local_size())
    job = Job(
        config=config,
        manifest=manifest,
        tokenizer_bytes=storage.read_bytes(layout.tokenizer_url(out)),
        launch_info=launch_info or {"launcher": "unknown"},
        threads=threads,
        total_steps=total_steps,
        steps_per_epoch=steps_per_epoch,
        max_lr=tc.learning_rate * lr_scale,
        min_lr=tc.min_lr * lr_scale,
        peak_per_rank=peak_per_rank,
        peak_source=peak_source,
        resumed_step=resumed.step,
        started=time.perf_counter(),
        ranks_ready_at=ranks_ready_at,
    )
    fields = {"step": resumed.step, "data_seed": data_seed, "consumed": consumed, "reader_world": reader_world}
    if tc.elastic:
        # Horovod elastic: ranks may leave and join; on a change every rank rolls back
        # to the last commit (in memory) and the loop starts again at the new size.
        state = hvd.elastic.TorchState(model=model, optimizer=optimizer, **fields)
        summary = hvd.elastic.run(train_loop)(state, job)
    else:
        summary = train_loop(LoopState(model, optimizer, **fields), job)
    hvd.barrier()  # Horovod: no rank leaves while rank 0 still writes
    return {"rank": hvd.rank(), "steps": total_steps, **({"summary": summary} if hvd.rank() == 0 else {})}


def train_loop(state, job: Job) -> dict:
    """The steps from `state.step` to the end, at the current world size; the summary."""
    import horovod.torch as hvd

    config, tc, manifest = job.config, job.config.train, job.manifest
    out, model, optimizer = config.output_url, state.model, state.optimizer
    rank, world_size = hvd.rank(), hvd.size()
    is_main = rank == 0
    micro = tc.backward_passes_per_step
    tokens_per_step = tc.batch_size * micro * manifest["window_size"] * world_size

    def allreduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        return hvd.allreduce(tensor, op=hvd.Sum, name="metrics_sum")

    if state.reader_world != world_size:  # elastic: the shards changed, so does the order
        state.data_seed, state.consumed, state.reader_world = tc.seed + state.step, 0, world_size
    peak_flops = float(allreduce_sum(torch.tensor([job.peak_per_rank], dtype=torch.float64))[0])
    flops_per_token = model.flops_per_token()
    stats = StatsWriter(out) if is_main else NullStats()
    stats.resume(state.step)
    if is_main:
        log.info(
            "training %.2fM parameters on %d rank(s) x %d thread(s): steps %d..%d (%d per epoch), %d tokens per step, peak %.0f GFLOP/s",
            model.num_parameters() / 1e6, world_size, job.threads, state.step + 1, job.total_steps, job.steps_per_epoch, tokens_per_step, peak_flops / 1e9,
        )  # fmt: skip

    entered = epoch_started = time.perf_counter()
    loop_started_at = time.time()  # wall clock, comparable with the driver's: stage timings
    entry_step = state.step
    interval, epoch_loss = Interval(), torch.zeros(2, dtype=torch.float64)  # epoch: summed loss, steps
    last_eval: dict = {}
    checkpoint_url = None
    mfu_values: list[float] = []
    model.train()
    batches_args = (out, "train", rank, world_size, tc.batch_size)
    with (
        storage_errors_as(out),
        dataset.window_batches(*batches_args, num_epochs=None, seed=state.data_seed, shuffle=True, skip_batches=state.consumed) as batches,
    ):
        while state.step < job.total_steps:
            step = state.step + 1
            epoch = (step - 1) // job.steps_per_epoch
            lr = learning_rate_at(step, max_lr=job.max_lr, min_lr=job.min_lr, warmup_steps=tc.warmup_steps, total_steps=job.total_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            step_started = time.perf_counter()
            result = train_step(model, optimizer, [torch.from_numpy(next(batches)) for _ in range(micro)], tc.grad_clip)
            state.step, state.consumed = step, state.consumed + micro
            # Step time covers loading, compute and allreduce, not evaluation or checkpoints.
            interval.add(result, time.perf_counter() - step_started)
            epoch_loss += torch.tensor([result.loss, 1.0], dtype=torch.float64)

            end_of_epoch = step % job.steps_per_epoch == 0 or step == job.total_steps
            if step % tc.log_interval == 0 or end_of_epoch:
                loss_x_tokens, correct, tokens, steps_done, _, sync = allreduce_sum(interval.sums).tolist()
                # The slowest rank sets the pace of a synchronous step.
                slowest = hvd.allreduce(torch.tensor([float(interval.sums[4]), peak_rss_mb()]), op=hvd.Max, name="max_time_rss")
                elapsed, rss = float(slowest[0]), float(slowest[1])
                steps_done /= world_size
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
                }
                mfu_values.append(record["mfu"])
                stats.log_step(record)
                if is_main:
                    eta = (time.perf_counter() - entered) / (step - entry_step) * (job.total_steps - step)
                    log.info(
                        "step %d/%d | epoch %d | loss %.4f | acc %.3f | grad %.2f | lr %.2e | %.0f tok/s | mfu %.0f%% | eta %s",
                        step, job.total_steps, epoch, record["loss"], record["accuracy"], result.grad_norm, lr, tokens_per_s, 100 * record["mfu"], _format_eta(eta),
                    )  # fmt: skip
                interval.reset()

            if (tc.eval_interval and step % tc.eval_interval == 0) or end_of_epoch:
                last_eval = validate(model, out, rank, world_size, tc.batch_size, tc.eval_max_batches, allreduce_sum)
                stats.log_eval({"step": step, "epoch": epoch, **last_eval})
                if is_main:
                    log.info(
                        "step %d | val loss %.4f | val ppl %.1f | val acc %.3f",
                        step, last_eval["val_loss"], last_eval["val_perplexity"], last_eval["val_accuracy"],
                    )  # fmt: skip
            if end_of_epoch:
                epoch_totals = allreduce_sum(epoch_loss)
                epoch_record = {"epoch": epoch, "step": step, "seconds": time.perf_counter() - epoch_started}
                stats.log_epoch({**epoch_record, "train_loss": float(epoch_totals[0] / epoch_totals[1]), **last_eval})
                epoch_loss.zero_()
                epoch_started = time.perf_counter()

            if (tc.checkpoint_interval and step % tc.checkpoint_interval == 0) or step == job.total_steps:
                # Horovod: a collective, so every rank takes part; rank 0 writes.
                rng_states = hvd.allgather_object(torch.get_rng_state(), name="rng_states")
                if is_main:
                    data = {"seed": state.data_seed, "world_size": world_size, "batches_consumed": state.consumed}
                    meta = {"epoch": epoch, "metrics": last_eval, "dataset": manifest["fingerprint"], "data": data}
                    checkpoint_url = checkpoint.save_checkpoint(out, step, model, optimizer, config, job.tokenizer_bytes, meta, rng_states)
                    checkpoint.prune_checkpoints(out, tc.keep_last)
                    log.info("checkpoint written: %s", checkpoint_url)
            if tc.elastic and (step % tc.elastic_commit_interval == 0 or step == job.total_steps):
                stats.flush()  # a new rank 0 after a reset continues from these records
                state.commit()  # Horovod elastic: the point a reset rolls back to

    total_seconds = time.perf_counter() - job.started
    timeline = {"ranks_ready_at": job.ranks_ready_at, "loop_started_at": loop_started_at, "loop_ended_at": time.time()}
    summary = {
        "steps": job.total_steps,
        "resumed_from_step": job.resumed_step,
        "epochs": math.ceil(job.total_steps / job.steps_per_epoch),
        "steps_per_epoch": job.steps_per_epoch,
        "ranks": world_size,
        "threads_per_rank": job.threads,
        "launch": job.launch_info,
        "horovod": {
            "compression": "fp16" if tc.fp16_allreduce else "none",
            "op": tc.allreduce_op,
            "backward_passes_per_step": micro,
            "lr_scaled_by_ranks": tc.scale_lr_by_ranks,
            "elastic": tc.elastic,
            "cycle_time_ms": float(os.environ["HOROVOD_CYCLE_TIME"]),
        },
        "global_batch_windows": tc.batch_size * micro * world_size,
        "tokens_per_step": tokens_per_step,
        "total_seconds": total_seconds,
        "tokens_per_s": tokens_per_step * (job.total_steps - job.resumed_step) / total_seconds,
        "peak_flops": peak_flops,
        "peak_source": job.peak_source,
        "model_flops_per_s": flops_per_token * tokens_per_step * (job.total_steps - job.resumed_step) / total_seconds,
        "mfu_mean": float(np.nanmean(mfu_values)) if mfu_values else float("nan"),
        "parameters": model.num_parameters(),
        "flops_per_token": flops_per_token,
        "final": last_eval,
        "checkpoint_url": checkpoint_url,
        "timeline": timeline,
    }
    if is_main:
        # The final model as one self-contained file (weights, config, tokenizer).
        summary["model_zip_url"] = storage.join(out, checkpoint.MODEL_ZIP)
        checkpoint.export_model_zip(checkpoint_url, summary["model_zip_url"])
        stats.write_summary(summary)
        write_curves(layout.stats_url(out), stats.steps, stats.evals)
    return summary

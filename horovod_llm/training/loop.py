"""The training loop of a rank: the steps from a start (or an elastic reset) to the end,
in nanoGPT's order (learning rate, step, log, evaluation, checkpoint, stop), and the
pieces it calls at their intervals. `train.py` sets a rank up and runs it."""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from horovod_llm import checkpoint, layout, storage
from horovod_llm.config import RunConfig
from horovod_llm.data import dataset
from horovod_llm.data.manifest import Manifest
from horovod_llm.errors import UserError
from horovod_llm.launchers.watchdog import Heartbeat
from horovod_llm.log import rank_logger
from horovod_llm.model import GPT
from horovod_llm.progress import is_terminal, training_bar, training_fraction, wants_bars
from horovod_llm.training import plots
from horovod_llm.training.collection import collections_at_steps
from horovod_llm.training.comm import Collectives
from horovod_llm.training.events import watch_hint
from horovod_llm.training.metrics import peak_rss_mb, thread_page_faults
from horovod_llm.training.precision import MIN_SPEEDUP, Calibration, Precision, choose, denormals_flushed
from horovod_llm.training.resume import rng_state
from horovod_llm.training.schedule import TrainingClock, learning_rate_at
from horovod_llm.training.stats import NullStats, StatsWriter, epoch_record, step_record, summary_record, write_run_outputs
from horovod_llm.training.step import Interval, ValidationShard, train_step, validate, validation_shard
from horovod_llm.training.tracking import NullTracker, git_commit, start_tracking

log = logging.getLogger(__name__)


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
    # {precision: (peak FLOP/s of one rank, measured, calibrated (an earlier, better
    # reading) or the config)} for each precision the loop may train in
    peaks: dict[str, tuple[float, str]]
    device: torch.device
    spark_gpus: list[str]  # the GPU addresses Spark scheduled for this rank's task
    calibration: Calibration | None  # train.precision=auto: this rank's fp32 and bf16 times
    resumed_step: int
    started: float
    ranks_ready_at: float  # wall clock after the ranks met: stage timings
    comm: Collectives
    beat: Heartbeat  # progress reports to the driver's watchdog
    # Elastic: this rank's clock (perf_counter) at its last commit. Not part of the
    # state, so a reset does not roll it back: the time since, lost to the reset and to
    # the steps it undid, still counts against the budget.
    committed_at: float | None = None
    # The MLflow run rank 0 logs into (tracking.py), kept across an elastic reset's re-entry.
    tracking_run_id: str | None = None

    @property
    def budget_seconds(self) -> float:
        return budget_seconds(self.config.train)

    def ends(self) -> str:
        """How the run ends, for the log: 'step 400 or 4 minutes of training'."""
        minutes = self.config.train.max_minutes
        ends = f"step {self.total_steps}" if self.total_steps else "the budget"
        if minutes:
            ends += f" or {minutes:g} minutes of training" if self.total_steps else f" ({minutes:g} minutes of training)"
        return ends


# The parts of the loop's wall time: reading batches; the step's own arithmetic (forward,
# backward, metrics, clipping, optimizer); waiting for the gradients' allreduce; the log
# lines' reductions and writes; evaluations; checkpoints; epoch ends and elastic
# commits; the garbage collections the loop runs (train.gc_interval). What none of them
# covers is the summary's `other`.
LOOP_PHASES = ("load", "compute", "allreduce_wait", "logging", "evaluation", "checkpoints", "epochs_and_commits", "collection")


def budget_seconds(train) -> float:
    """The wall-clock budget of training (0: none)."""
    return 60.0 * train.max_minutes


@dataclass
class Entry:
    """One entry of the loop (a run, or the steps after an elastic reset): what it
    measures and keeps between its steps."""

    step: int
    trained_seconds: float
    world_size: int
    tokens_per_step: int
    peak_flops: float
    peak_source: str
    flops_per_token: float
    placement: list
    precision: Precision
    precision_report: dict  # the summary's `precision` block: setting, choice, why
    forward: torch.nn.Module  # the model, or its torch.compile'd module (train.compile)
    entered: float = field(default_factory=time.perf_counter)
    loop_started_at: float = field(default_factory=time.time)  # wall clock: stage timings
    epoch_started: float = field(default_factory=time.perf_counter)
    scaler: torch.amp.GradScaler | None = None  # fp16's loss scaling (a pass-through otherwise)
    interval: Interval = field(default_factory=Interval)
    epoch_loss: torch.Tensor = field(default_factory=lambda: torch.zeros(2, dtype=torch.float64))  # summed loss, steps
    last_eval: dict = field(default_factory=dict)
    checkpoint_url: str | None = None
    mfu_values: list = field(default_factory=list)
    # Where this rank's loop time went (the summary's `loop_seconds`), by LOOP_PHASES.
    phases: dict = field(default_factory=lambda: dict.fromkeys(LOOP_PHASES, 0.0))
    # This rank's validation batches and their text's counts, from the first evaluation on.
    val_shard: ValidationShard | None = None

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.phases[phase] += time.perf_counter() - started

    def seconds_per_step(self, step: int) -> float:
        return (time.perf_counter() - self.entered) / (step - self.step)


def train_loop(state, job: Job) -> dict:
    """The steps from `state.step` to the end, at the current world size; the summary.

    Each step: learning rate, the step, then (at their intervals) a log line, an
    evaluation, an epoch's end, a checkpoint, an elastic commit; until the last step or
    the budget."""
    config, train, comm = job.config, job.config.train, job.comm
    is_main = comm.rank == 0
    job.beat.rank = comm.rank  # elastic: a reset may have re-ranked this process
    job.beat("loop", state.step)
    progress = rank_logger(__name__, is_main)  # the other ranks log warnings and errors only
    if state.reader_world != comm.size:  # elastic: the shards changed, so does the order
        state.data_seed, state.consumed, state.reader_world = train.seed + state.step, 0, comm.size
    if comm.elastic:
        _count_time_lost_to_reset(state, job, progress)
    entry = _enter(state, job, state.model)
    stats = StatsWriter(config.output_url, state.step, tracker=_tracker(job, entry, state.step)) if is_main else NullStats()
    with stats:
        return _train_entry(state, job, entry, stats, progress)


def _tracker(job: Job, entry: Entry, step: int):
    """Rank 0's MLflow tracker for this entry (a NullTracker where tracking is off), in
    the run the job or the latest checkpoint names, tagged with where and how it runs."""
    if not job.config.tracking.mlflow_uri:
        return NullTracker()
    tags = {
        "horovod_llm.launcher": job.launch_info.get("launcher", ""),
        "horovod_llm.backend": job.comm.backend,
        "horovod_llm.ranks": str(entry.world_size),
        "horovod_llm.hosts": json.dumps(sorted({p["host"] for p in entry.placement})),
        "horovod_llm.placement": json.dumps([{"rank": p["rank"], "host": p["host"], "device": p["device"]} for p in entry.placement]),
        "horovod_llm.dataset": job.manifest.fingerprint,
        **({"mlflow.source.git.commit": commit} if (commit := git_commit()) else {}),
    }
    tracker = start_tracking(job.config, step, job.tracking_run_id, tags)
    job.tracking_run_id = tracker.run_id or job.tracking_run_id
    return tracker


def _train_entry(state, job: Job, entry: Entry, stats, progress) -> dict:
    """train_loop's steps, with this entry's statistics writer."""
    config, train, comm = job.config, job.config.train, job.comm
    model, optimizer, is_main = state.model, state.optimizer, comm.rank == 0
    clock = TrainingClock(job.budget_seconds, synced_seconds=state.trained_seconds, synced_step=state.step)
    progress.info(
        "training %.2fM parameters on %d rank(s) x %d thread(s) on %s in %s: from step %d to %s (%d steps per epoch), %d tokens per step, peak %.0f GFLOP/s",
        model.num_parameters() / 1e6, comm.size, job.threads, job.device.type, entry.precision.name, state.step + 1, job.ends(), job.steps_per_epoch,
        entry.tokens_per_step, entry.peak_flops / 1e9,
    )  # fmt: skip
    progress.info("watch it: %s", watch_hint(layout.stats_url(config.output_url)))
    if is_main:
        plots.import_in_background()
    model.train()
    micro, last = train.backward_passes_per_step, False
    reader = dataset.window_batches(
        config.output_url, "train", comm.rank, comm.size, train.batch_size, num_epochs=None, seed=state.data_seed, shuffle=True, skip_batches=state.consumed
    )
    drawn = training_bar(is_main and wants_bars(config.progress, is_terminal(sys.stderr)), job.total_steps)
    collecting = collections_at_steps(train.gc_interval)
    with storage.storage_errors_as(config.output_url), reader as batches, drawn as bar, collecting as collector:
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
            step_started, faults_before = time.perf_counter(), thread_page_faults()
            micro_batches = [torch.from_numpy(next(batches)).to(job.device, non_blocking=True) for _ in range(micro)]
            loaded = time.perf_counter()
            result = train_step(entry.forward, optimizer, micro_batches, train.grad_clip, entry.precision, entry.scaler)
            state.step, state.consumed = step, state.consumed + micro
            # Step time covers loading, compute and allreduce, not evaluation or checkpoints.
            stepped = time.perf_counter()
            entry.interval.add(result, stepped - step_started, loaded - step_started, thread_page_faults() - faults_before)
            entry.phases["load"] += loaded - step_started
            entry.phases["allreduce_wait"] += result.sync_seconds
            entry.phases["compute"] += stepped - loaded - result.sync_seconds
            entry.epoch_loss += torch.tensor([result.loss, 1.0], dtype=torch.float64)
            with entry.timed("collection"):
                collector.after_step(step)
            job.beat("step", step)
            # Every rank decides alike: from the step count and the synced clock.
            last = step == job.total_steps or clock.spent(step)
            end_of_epoch = step % job.steps_per_epoch == 0 or last

            if step % train.log_interval == 0 or end_of_epoch:
                with entry.timed("logging"):
                    record = _log_step(entry, job, clock, stats, step, epoch, lr, result.grad_norm)
                bar.set_loss(record["loss"])
                progress.info(
                    "step %d%s | epoch %d | loss %.4f | acc %.3f | grad %.2f | lr %.2e | %.0f tok/s | mfu %.0f%% | %s",
                    step, f"/{job.total_steps}" if job.total_steps else "", epoch, record["loss"], record["accuracy"], result.grad_norm, lr,
                    record["tokens_per_s"], 100 * record["mfu"], _remaining(clock, step, job.total_steps, entry.seconds_per_step(step)),
                )  # fmt: skip
            # Between the step lines, rank 0's bar (on a terminal) counts down as they do.
            bar.show(
                step,
                training_fraction(step, job.total_steps, clock.fraction(step)),
                _remaining(clock, step, job.total_steps, entry.seconds_per_step(step)),
                force=last,
            )
            if (train.eval_interval and step % train.eval_interval == 0) or end_of_epoch:
                with entry.timed("evaluation"):
                    _evaluate(entry, job, model, stats, step, epoch, progress)
            if end_of_epoch:
                with entry.timed("epochs_and_commits"):
                    epoch_totals = comm.allreduce(entry.epoch_loss, "sum", name="metrics_sum")
                    stats.log_epoch(epoch_record(epoch, step, time.perf_counter() - entry.epoch_started, epoch_totals, entry.last_eval))
                entry.epoch_loss.zero_()
                entry.epoch_started = time.perf_counter()
            if (train.checkpoint_interval and step % train.checkpoint_interval == 0) or last:
                with entry.timed("checkpoints"):
                    _save_checkpoint(entry, job, state, clock, step, epoch, progress)
                    stats.sync()  # on S3, the statistics and events reach it with each checkpoint
            if comm.elastic and (step % train.elastic_commit_interval == 0 or last):
                with entry.timed("epochs_and_commits"):
                    state.trained_seconds = clock.seconds_at(step)
                    job.committed_at = time.perf_counter()
                    stats.sync()  # a new rank 0 after a reset continues from these records
                    state.commit()  # Horovod elastic: the point a reset rolls back to

    summary = run_summary(job, entry, state.step, clock, model.num_parameters())
    if is_main:
        write_run_outputs(stats, summary, entry.checkpoint_url, config.output_url)
    job.beat("done", state.step)
    return summary


def _count_time_lost_to_reset(state, job: Job, progress) -> None:
    """After an elastic reset, the wall time since the last commit (a rank that just
    joined has none: the max across ranks) is spent cluster time: a budget counts it."""
    lost = 0.0 if job.committed_at is None else time.perf_counter() - job.committed_at
    lost = float(job.comm.allreduce(torch.tensor([lost], dtype=torch.float64), "max", name="lost_seconds")[0])
    if lost:
        state.trained_seconds += lost
        progress.warning("resuming at step %d after a reset: the %.1f s since the last commit count against the budget", state.step, lost)


def _enter(state, job: Job, model: GPT) -> Entry:
    """The loop's measures at this world size, the precision the ranks agree on, and
    where the ranks run: host names, the interface Gloo was given ("lo" locally), the
    device and Spark's GPUs, in stats/placement.json from the start (again after an
    elastic reset), so that the host of each rank is known while it trains."""
    comm, train = job.comm, job.config.train
    precision, report = _agree_on_precision(job)
    peak_per_rank, peak_source = job.peaks[precision.name]
    peak_flops = float(comm.allreduce(torch.tensor([peak_per_rank], dtype=torch.float64), "sum", name="metrics_sum")[0])
    mine = {
        "host": socket.gethostname(),
        "gloo_iface": os.environ.get("HOROVOD_GLOO_IFACE") or os.environ.get("GLOO_SOCKET_IFNAME"),
        "device": str(job.device),
        "spark_gpus": job.spark_gpus,
        # read back from the kernel, not from what was asked for
        "cores": sorted(os.sched_getaffinity(0)) if comm.cores else None,
    }
    placement = [{"rank": r, **p} for r, p in enumerate(comm.allgather_object(mine, name="placement"))]
    refuse_mixed_devices(placement)  # every rank sees the same list, so every rank refuses alike
    if comm.rank == 0:
        storage.write_json(storage.join(layout.stats_url(job.config.output_url), "placement.json"), {"step": state.step, "ranks": placement})
        # in the log too: which host a rank's later error or silence points at
        log.info("placement: %s", ", ".join(f"rank {p['rank']} on {p['host']}{_bound(p['cores'])}" for p in placement))
    tokens_per_step = train.batch_size * train.backward_passes_per_step * job.manifest.window_size * comm.size
    # A compiled module shares the model's parameters: checkpoints keep the model's keys.
    forward = torch.compile(model) if train.compile else model
    return Entry(
        state.step, state.trained_seconds, comm.size, tokens_per_step, peak_flops, peak_source, model.flops_per_token(), placement,
        precision, report, forward, scaler=precision.grad_scaler(),
    )  # fmt: skip


def _bound(cores: list[int] | None) -> str:
    return f" (cores {','.join(map(str, cores))})" if cores else ""


def refuse_mixed_devices(placement: list[dict]) -> None:
    """Ranks on CUDA and on the CPU at once (train.device=auto on a cluster where some
    hosts have no usable GPU) would reduce gradients over NCCL on some and Gloo on the
    others: refused in one line, naming the CPU hosts."""
    kinds = sorted({p["device"].split(":")[0] for p in placement})
    if len(kinds) > 1:
        cpu_hosts = sorted({p["host"] for p in placement if p["device"] == "cpu"})
        raise UserError(
            f"the ranks would train on {' and '.join(kinds)} at once (on the CPU: {', '.join(cpu_hosts)}): "
            "set train.device=cpu, or give every host a GPU and a CUDA build of torch"
        )


def _agree_on_precision(job: Job) -> tuple[Precision, dict]:
    """train.precision, or for `auto` the choice from the slowest rank's bf16 gain (every
    rank then trains alike, and on a mixed cluster the gain holds for the step's pace)."""
    train, comm = job.config.train, job.comm
    report = {"setting": train.precision, "denormals_flushed": denormals_flushed()}
    if job.calibration is not None:
        # a minimum over the ranks, as the maximum of the negated gains
        speedup = -float(comm.allreduce(torch.tensor([-job.calibration.bf16_speedup], dtype=torch.float64), "max", name="bf16_speedup")[0])
        chosen = choose(train.precision, speedup)
        report.update(
            bf16_speedup=round(speedup, 3), min_speedup=MIN_SPEEDUP, calibration=job.calibration.source,
            fp32_step_s=job.calibration.fp32_s, bf16_step_s=job.calibration.bf16_s,
        )  # fmt: skip
        rank_logger(__name__, comm.rank == 0).info(
            "train.precision=auto: %s (a bf16 training step is %.2fx as fast as fp32's on the slowest rank; bf16 from %.2fx; %s)",
            chosen, speedup, MIN_SPEEDUP, "measured now" if job.calibration.source == "measured" else "best readings of this machine type",
        )  # fmt: skip
    else:
        chosen = train.precision
    return Precision(chosen, job.device.type), {**report, "used": chosen}


def _log_step(entry: Entry, job: Job, clock: TrainingClock, stats, step: int, epoch: int, lr: float, grad_norm: float) -> dict:
    """The interval's figures, reduced across ranks, as a step record (logged by rank 0);
    the clock synced to the slowest rank, which sets the pace of a synchronous step."""
    comm = job.comm
    # One collective for the sums and the maxima: each rank adds its seconds, peak RSS and
    # trained seconds in its own slot, and every rank takes the maximum over the slots.
    mine = [float(entry.interval.sums[4]), peak_rss_mb(), entry.trained_seconds + time.perf_counter() - entry.entered]
    sized = len(entry.interval.sums)
    packed = torch.zeros(sized + len(mine) * comm.size, dtype=torch.float64)
    packed[:sized] = entry.interval.sums
    packed[sized + len(mine) * comm.rank : sized + len(mine) * (comm.rank + 1)] = torch.tensor(mine, dtype=torch.float64)
    reduced = comm.allreduce(packed, "sum", name=f"interval_{comm.size}")
    sums = reduced[:sized].tolist()
    elapsed, rss, trained = reduced[sized:].view(comm.size, len(mine)).max(dim=0).values.tolist()
    record = step_record(
        step, epoch, lr, grad_norm, sums, elapsed, rss, trained, entry.world_size, entry.tokens_per_step, entry.flops_per_token, entry.peak_flops
    )
    clock.sync(step, trained, record["step_time_s"])
    entry.mfu_values.append(record["mfu"])
    stats.log_step(record)
    entry.interval.reset()
    return record


def _evaluate(entry: Entry, job: Job, model: GPT, stats, step: int, epoch: int, progress) -> None:
    comm, train = job.comm, job.config.train

    def allreduce_sum(tensor: torch.Tensor) -> torch.Tensor:
        return comm.allreduce(tensor, "sum", name="metrics_sum")

    overlap = job.manifest.overlap_of("val")
    if entry.val_shard is None:
        entry.val_shard = validation_shard(job.config.output_url, comm.rank, comm.size, train.batch_size, train.eval_max_batches, overlap, job.tokenizer_bytes)
    entry.last_eval = validate(
        model, job.tokenizer_bytes, job.config.output_url, overlap, comm.rank, comm.size, train.batch_size, train.eval_max_batches,
        allreduce_sum, shard=entry.val_shard,
    )  # fmt: skip
    stats.log_eval({"step": step, "epoch": epoch, **entry.last_eval})
    job.beat("eval", step)
    progress.info(
        "step %d | val loss %.4f | val ppl %.1f | val acc %.3f | val nats/char %.3f",
        step, entry.last_eval["val_loss"], entry.last_eval["val_perplexity"], entry.last_eval["val_accuracy"], entry.last_eval["val_nats_per_character"],
    )  # fmt: skip


def _save_checkpoint(entry: Entry, job: Job, state, clock: TrainingClock, step: int, epoch: int, progress) -> None:
    """A collective, so every rank takes part (their RNG states); rank 0 writes."""
    comm, out, train = job.comm, job.config.output_url, job.config.train
    rng_states = comm.allgather_object(rng_state(job.device), name="rng_states")
    if comm.rank == 0:
        data = {"seed": state.data_seed, "world_size": comm.size, "batches_consumed": state.consumed}
        meta = {
            "epoch": epoch, "metrics": entry.last_eval, "dataset": job.manifest.fingerprint, "data": data, "trained_seconds": clock.seconds_at(step),
            # what it trained in; the weights themselves are fp32 whatever it was
            "precision": entry.precision.name,
            "tracking": {"mlflow_run_id": job.tracking_run_id},  # a resume logs into the same MLflow run
        }  # fmt: skip
        entry.checkpoint_url = checkpoint.save_checkpoint(out, step, state.model, state.optimizer, job.config, job.tokenizer_bytes, meta, rng_states)
        checkpoint.prune_checkpoints(out, train.keep_last)
        progress.info("checkpoint written: %s", entry.checkpoint_url)
    job.beat("checkpoint", step)


def run_summary(job: Job, entry: Entry, step: int, clock: TrainingClock, parameters: int) -> dict:
    """The run's summary.json (stats.summary_record), from this loop entry's figures."""
    return summary_record(
        steps=step,
        total_steps=job.total_steps,
        trained_seconds=clock.seconds_at(step),
        budget_seconds=job.budget_seconds,
        resumed_from_step=job.resumed_step,
        steps_per_epoch=job.steps_per_epoch,
        ranks=entry.world_size,
        threads_per_rank=job.threads,
        launch=job.launch_info,
        placement=entry.placement,
        collectives=job.comm.describe(job.config.train),
        global_batch_windows=job.config.train.batch_size * job.config.train.backward_passes_per_step * entry.world_size,
        tokens_per_step=entry.tokens_per_step,
        total_seconds=time.perf_counter() - job.started,
        steps_run=step - job.resumed_step,
        peak_flops=entry.peak_flops,
        peak_source=entry.peak_source,
        precision=entry.precision_report,
        device=job.device.type,
        mfu_values=entry.mfu_values,
        parameters=parameters,
        flops_per_token=entry.flops_per_token,
        final=entry.last_eval,
        checkpoint_url=entry.checkpoint_url,
        timeline={"ranks_ready_at": job.ranks_ready_at, "loop_started_at": entry.loop_started_at, "loop_ended_at": time.time()},
        loop_seconds=loop_seconds(entry),
    )


def loop_seconds(entry: Entry) -> dict:
    """Where this rank's (rank 0's, in the summary) loop wall time went, by phase."""
    total = time.perf_counter() - entry.entered
    phases = {name: round(seconds, 3) for name, seconds in entry.phases.items()}
    return {**phases, "other": round(total - sum(entry.phases.values()), 3), "total": round(total, 3)}


def _remaining(clock: TrainingClock, step: int, total_steps: int | None, seconds_per_step: float) -> str:
    """The log's countdown: the budget left, or an estimate from the steps left."""
    if clock.budget_seconds:
        return f"{_format_eta(max(clock.budget_seconds - clock.seconds_at(step), 0.0))} of budget left"
    return f"eta {_format_eta(seconds_per_step * (total_steps - step))}"


def _format_eta(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}m{seconds:02d}s"

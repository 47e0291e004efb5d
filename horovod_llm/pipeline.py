"""`horovod-llm run`: preprocess, train, then generate a sample, in one Spark application."""

from __future__ import annotations

import logging
import time

from horovod_llm import launchers, layout, storage
from horovod_llm.checkpoint import load_checkpoint
from horovod_llm.config import RunConfig
from horovod_llm.data.preprocess import run_preprocess
from horovod_llm.inference.generate import generate_text
from horovod_llm.launchers.cluster import check_for_ranks
from horovod_llm.launchers.launch import check_device_here, launch_training
from horovod_llm.spark import spark_session

log = logging.getLogger(__name__)


def train_stage_split(started_at: float, ended_at: float, timeline: dict) -> dict:
    """The training stage's seconds, split at rank 0's wall-clock marks: starting the
    ranks (launcher, processes, imports, Gloo rendezvous), setting a rank up (dataset
    manifest, model, Word2Vec, broadcasts, matmul peak), the training loop (with its
    evaluations and checkpoints), and wrapping up (model.zip, statistics, results)."""
    return {
        "horovod_start": timeline["ranks_ready_at"] - started_at,
        "rank_setup": timeline["loop_started_at"] - timeline["ranks_ready_at"],
        "training_loop": timeline["loop_ended_at"] - timeline["loop_started_at"],
        "wrap_up": ended_at - timeline["loop_ended_at"],
    }


def run_pipeline(config: RunConfig, force: bool = False, started_spark: tuple | None = None) -> str:
    """Run every stage; return the report printed at the end (sample and final metrics).
    Stage seconds go to `stats/pipeline.json` under output_url. `started_spark`: a
    session the caller started and the seconds it took (`horovod-llm run` starts it
    while torch imports)."""
    check_device_here(config)  # before Spark starts
    timings = {}
    if started_spark is None:
        started = time.perf_counter()
        # The Horovod launcher needs the session too; the local launchers do not.
        spark = spark_session(config.spark)
        timings["spark_start"] = time.perf_counter() - started
    else:
        spark, timings["spark_start"] = started_spark
    if launchers.launcher(config.train.launcher).on_spark_tasks:
        # A cluster that cannot run the ranks is refused before preprocessing, not after
        # (training checks again: executors may come and go while preprocessing runs).
        check_for_ranks(spark.sparkContext, config.train)

    started = time.perf_counter()
    manifest = run_preprocess(config, spark, force=force)
    timings["preprocess"] = time.perf_counter() - started

    started, train_started_at = time.perf_counter(), time.time()
    result = launch_training(config, spark)
    timings["train"] = time.perf_counter() - started
    train_ended_at = time.time()

    started = time.perf_counter()
    loaded = load_checkpoint(config.output_url)
    g = config.generate
    sample = generate_text(loaded, g.prompt, g.sampling())
    storage.write_text(storage.join(layout.samples_url(config.output_url), f"sample-step-{loaded.step:08d}.txt"), sample + "\n")
    timings["generate"] = time.perf_counter() - started

    final = result.get("summary", {}).get("final") or loaded.meta.get("metrics", {})
    log.info("stage seconds: %s", {k: round(v, 1) for k, v in timings.items()})
    # A run that had nothing left to train returns the summary of an earlier one.
    timeline = result.get("summary", {}).get("timeline")
    fresh = timeline is not None and timeline["loop_started_at"] >= train_started_at
    stats = {"stages": timings, "train_stage": train_stage_split(train_started_at, train_ended_at, timeline) if fresh else None}
    storage.write_json(storage.join(layout.stats_url(config.output_url), "pipeline.json"), stats)
    header = f"--- sample from {loaded.url} (step {loaded.step}) ---"
    footer = (
        f"--- final validation loss {final.get('val_loss', float('nan')):.4f} "
        f"(perplexity {final.get('val_perplexity', float('nan')):.1f}, token accuracy {final.get('val_accuracy', float('nan')):.3f}) "
        f"{validation_coverage(final.get('val_windows'), manifest.splits['val'].windows)}; "
        f"outputs under {storage.normalize(config.output_url)} ---"
    )
    return "\n".join([header, sample, footer])


def validation_coverage(scored: int | None, windows: int) -> str:
    """What the report's validation figures cover: training scores at most
    train.eval_max_batches batches per rank, so on a large split they are a sample."""
    if scored is None or scored >= windows:
        return f"on all {windows:,} validation windows"
    return f"on {scored:,} of {windows:,} validation windows (train.eval_max_batches per rank; 'horovod-llm evaluate --split val' scores them all)"

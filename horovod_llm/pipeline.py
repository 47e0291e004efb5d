"""`horovod-llm run`: preprocess, train, then generate a sample, in one Spark application."""

from __future__ import annotations

import logging
import time

from horovod_llm import layout, storage
from horovod_llm.checkpoint import load_checkpoint
from horovod_llm.config import RunConfig
from horovod_llm.generate import generate_text
from horovod_llm.launch import launch_training
from horovod_llm.preprocess import run_preprocess
from horovod_llm.spark import spark_session

log = logging.getLogger(__name__)


def run_pipeline(config: RunConfig, force: bool = False) -> str:
    """Run every stage; return the report printed at the end (sample and final metrics)."""
    timings = {}
    started = time.perf_counter()
    # The Horovod launcher needs the session too; the local launchers do not.
    spark = spark_session(config.spark)
    timings["spark_start"] = time.perf_counter() - started

    started = time.perf_counter()
    run_preprocess(config, spark, force=force)
    timings["preprocess"] = time.perf_counter() - started

    started = time.perf_counter()
    result = launch_training(config, spark)
    timings["train"] = time.perf_counter() - started

    started = time.perf_counter()
    loaded = load_checkpoint(config.output_url)
    g = config.generate
    sample = generate_text(loaded, g.prompt, max_new_tokens=g.max_new_tokens, temperature=g.temperature, top_k=g.top_k, seed=g.seed)
    storage.write_text(storage.join(layout.samples_url(config.output_url), f"sample-step-{loaded.step:08d}.txt"), sample + "\n")
    timings["generate"] = time.perf_counter() - started

    final = result.get("summary", {}).get("final") or loaded.meta.get("metrics", {})
    log.info("stage seconds: %s", {k: round(v, 1) for k, v in timings.items()})
    header = f"--- sample from {loaded.url} (step {loaded.step}) ---"
    footer = (
        f"--- final validation loss {final.get('val_loss', float('nan')):.4f} "
        f"(perplexity {final.get('val_perplexity', float('nan')):.1f}, token accuracy {final.get('val_accuracy', float('nan')):.3f}); "
        f"outputs under {storage.normalize(config.output_url)} ---"
    )
    return "\n".join([header, sample, footer])

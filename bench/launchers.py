"""The two Spark launchers side by side: Horovod (`train.launcher=spark`, horovod.spark.run)
and Spark's TorchDistributor (`train.launcher=torch_distributor`, torch.distributed).

    .venv/bin/python bench/launchers.py [--repeats 2] [--steps 40] [--json PATH]

Needs the bench dataset (bench/prepare.py). Each repetition trains the demo recipe
(configs/local.yaml) for a fixed number of steps under each launcher on 1 and 2 ranks of
one torch thread each (as bench/train_throughput.py's 1x1 and 2x1: the same resources
per rank), the launchers alternating, all in one local[2] Spark session, each run from
no checkpoint. Per run:

  start-up     seconds from `launch_training` to the first step of the loop (the ranks'
               processes, their imports, the collectives meeting, the model, the reader)
  tokens/s     the median of the logged intervals after the first (steady state)
  scaling      tokens/s on 2 ranks / (2 x tokens/s on 1 rank), same per-rank batch,
               within one repetition

Figures are medians over repetitions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from common import DATASET_URL, load_average, local_config, median, report, write_result

LAUNCHERS = ("spark", "torch_distributor")


def local_spark():
    """The benches' one local[2] Spark session (loopback only, warnings only), in which
    the product runs of a bench start one after the other."""
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from horovod_llm.log import setup_logging
    from horovod_llm.spark import spark_session

    setup_logging("WARNING")
    return spark_session(local_config(["spark.master=local[2]"]).spark, {"spark.ui.showConsoleProgress": "false"})


def train_once(spark, launcher: str, ranks: int, folder: Path, steps: int = 0, minutes: float = 0.0, overrides: tuple[str, ...] = ()) -> dict:
    """One run of the demo recipe from no checkpoint, on 1-thread ranks, in fp32: `steps`
    steps without evaluations or checkpoints (start-up and step speed), or `minutes` of
    training at configs/local.yaml's evaluation and checkpoint intervals (the whole loop)."""
    from horovod_llm import layout, storage
    from horovod_llm.launchers.launch import launch_training

    out = folder / f"{launcher}-{ranks}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for part in ("dataset", "tokenizer", "embeddings"):
        (out / part).symlink_to(Path(DATASET_URL) / part)  # read only: one dataset for every run
    config = local_config([f"output_url={out}", f"train.launcher={launcher}", f"train.num_proc={ranks}", "train.precision=fp32", *overrides])
    if minutes:
        train = dataclasses.replace(config.train, threads_per_rank=1, max_minutes=minutes, max_steps=0)
    else:
        train = dataclasses.replace(
            config.train, threads_per_rank=1, max_minutes=0.0, max_steps=steps, log_interval=10, eval_interval=0, eval_max_batches=1, checkpoint_interval=0
        )
    config = dataclasses.replace(config, train=train, progress=False)
    started = time.time()
    summary = launch_training(config, spark)["summary"]
    lines = storage.read_text(storage.join(layout.stats_url(str(out)), "steps.jsonl")).splitlines()
    logged = [json.loads(line) for line in lines]
    records = logged[1:]  # the first interval holds the warm-up
    # tokens per step / step time: the steps' own speed, without evaluations and checkpoints
    intervals = [summary["tokens_per_step"] / r["step_time_s"] for r in records]
    steps = [r["step"] - earlier["step"] for earlier, r in zip(logged[:-1], records, strict=True)]
    return {
        "launcher": launcher,
        "ranks": ranks,
        "backend": summary["backend"],
        "gradient_reduction": summary["collectives"].get("gradient_reduction", summary["backend"]),
        "startup_s": summary["timeline"]["loop_started_at"] - started,
        "ranks_ready_s": summary["timeline"]["ranks_ready_at"] - started,
        "tokens_per_s": median(intervals),
        # every timed step's tokens over their summed time: the estimator the bare loop uses
        "mean_tokens_per_s": summary["tokens_per_step"] * sum(steps) / sum(r["step_time_s"] * n for r, n in zip(records, steps, strict=True)),
        "loop_tokens_per_s": summary["tokens_per_s"],
        # (absent from code before issue 28: bench/overhead.py --json of an older checkout)
        "loop_seconds": summary.get("loop_seconds"),
        "allreduce_share": median([r["allreduce_share"] for r in records]),
        "load_share": median([r["load_share"] for r in records if "load_share" in r]),
        "steps": summary["steps"],
        "tokens_per_step": summary["tokens_per_step"],
        "parameters": summary["parameters"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    load_before = load_average()
    spark = local_spark()
    runs: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for repeat in range(args.repeats):
                order = LAUNCHERS if repeat % 2 == 0 else LAUNCHERS[::-1]
                for launcher in order:
                    for ranks in (1, 2):
                        run = {"repeat": repeat, **train_once(spark, launcher, ranks, Path(tmp), steps=args.steps)}
                        runs.append(run)
                        report(f"{launcher} x{ranks}: start-up {run['startup_s']:.1f} s, {run['tokens_per_s']:.0f} tokens/s")
    finally:
        spark.stop()

    def of(launcher: str, ranks: int, key: str) -> list[float]:
        return [r[key] for r in runs if r["launcher"] == launcher and r["ranks"] == ranks]

    result: dict = {"repeats": args.repeats, "steps": args.steps, "runs": runs, "launchers": {}, "load_before": load_before, "load_after": load_average()}
    for launcher in LAUNCHERS:
        one, two = of(launcher, 1, "tokens_per_s"), of(launcher, 2, "tokens_per_s")
        result["launchers"][launcher] = {
            "backend": of(launcher, 1, "backend")[0],
            "tokens_per_s_1": median(one),
            "tokens_per_s_2": median(two),
            "scaling_efficiency": median([b / (2 * a) for a, b in zip(one, two, strict=True)]),
            "startup_s_1": median(of(launcher, 1, "startup_s")),
            "startup_s_2": median(of(launcher, 2, "startup_s")),
        }
    horovod, torch_distributor = result["launchers"]["spark"], result["launchers"]["torch_distributor"]
    result["torch_over_horovod_tokens_per_s_2"] = torch_distributor["tokens_per_s_2"] / horovod["tokens_per_s_2"]
    for launcher, row in result["launchers"].items():
        report(
            f"{launcher} ({row['backend']}): {row['tokens_per_s_1']:.0f} / {row['tokens_per_s_2']:.0f} tokens/s on 1 / 2 ranks, "
            f"scaling {row['scaling_efficiency']:.2f}, start-up {row['startup_s_1']:.1f} / {row['startup_s_2']:.1f} s"
        )
    write_result(args.json, result)


if __name__ == "__main__":
    main()

"""The product's training loop against the bare loop, in one run: how much of the
machine a rank's step and the whole loop leave to the model's arithmetic.

    .venv/bin/python bench/overhead.py [--repeats 2] [--minutes 1] [--json PATH]

Needs the bench dataset (bench/prepare.py). Each repetition runs, the arms alternating:

  bare x1, bare x2   bench/bare_loop.py: 1 and 2 plain processes training the demo
                     recipe's model (same batch, AdamW, clipping, 1 torch thread) on ids
                     in memory; the x2 figure is the two processes' sum
  spark x1, x2       the product (`train.launcher=spark`, horovod.spark.run) on 1 and 2
  torch_distributor  ranks of 1 thread, and the same under Spark's TorchDistributor;
       x1, x2        each for `--minutes` of training with the demo's evaluation and
                     checkpoint intervals, from no checkpoint, in one local[2] session

All in fp32 (the product pinned to it: `auto` would pick by CPU). Per product run:

  in-step tokens/s   tokens per step / the median logged step time (loading, the step,
                     the allreduce; the slowest rank's)
  loop tokens/s      the summary's: every step over the loop's wall time, evaluations,
                     checkpoints and logging included
  breakdown          rank 0's loop time by phase (summary.json `loop_seconds`)

Ratios (medians over repetitions of ratios within one): in-step and loop tokens/s over
the bare arm of as many processes (targets 0.90 in-step, 0.85 over the loop), and
scaling, tokens/s on 2 ranks / (2 x on 1), for each launcher and for the bare arm (the
ceiling the machine allows; target 0.85).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from bare_loop import run_bare
from common import git_commit, load_average, local_config, median, report, write_result
from launchers import LAUNCHERS, train_once

TARGET_IN_STEP, TARGET_LOOP, TARGET_SCALING = 0.90, 0.85, 0.85


def product_run(spark, launcher: str, ranks: int, minutes: float, folder: Path) -> dict:
    """One product run at the demo's intervals (configs/local.yaml), pinned to fp32."""
    run = train_once(spark, launcher, ranks, folder, minutes=minutes)
    run["in_step_tokens_per_s"] = run.pop("tokens_per_s")
    return run


def ratios(runs: list[dict], bare: list[dict]) -> dict:
    """Per launcher: the product against the bare arm, and scaling, medians over repetitions."""

    def of(rows: list[dict], repeat: int, **match) -> dict:
        return next(r for r in rows if r["repeat"] == repeat and all(r[k] == v for k, v in match.items()))

    repeats = sorted({r["repeat"] for r in runs})
    out: dict = {
        "bare": {
            "tokens_per_s_1": median([of(bare, i, ranks=1)["tokens_per_s"] for i in repeats]),
            "tokens_per_s_2": median([of(bare, i, ranks=2)["tokens_per_s"] for i in repeats]),
            "scaling": median([of(bare, i, ranks=2)["tokens_per_s"] / (2 * of(bare, i, ranks=1)["tokens_per_s"]) for i in repeats]),
        }
    }
    for launcher in sorted({r["launcher"] for r in runs}):
        row: dict = {}
        for ranks in (1, 2):
            pairs = [(of(runs, i, launcher=launcher, ranks=ranks), of(bare, i, ranks=ranks)["tokens_per_s"]) for i in repeats]
            row[f"in_step_tokens_per_s_{ranks}"] = median([p["in_step_tokens_per_s"] for p, _ in pairs])
            row[f"loop_tokens_per_s_{ranks}"] = median([p["loop_tokens_per_s"] for p, _ in pairs])
            row[f"in_step_over_bare_{ranks}"] = median([p["in_step_tokens_per_s"] / b for p, b in pairs])
            row[f"loop_over_bare_{ranks}"] = median([p["loop_tokens_per_s"] / b for p, b in pairs])
            phases = [p["loop_seconds"] for p, _ in pairs if p["loop_seconds"]]
            if phases:
                row[f"loop_shares_{ranks}"] = {name: median([ph[name] / ph["total"] for ph in phases]) for name in phases[0] if name != "total"}
        for kind in ("in_step", "loop"):
            row[f"{kind}_scaling"] = median(
                [
                    of(runs, i, launcher=launcher, ranks=2)[f"{kind}_tokens_per_s"] / (2 * of(runs, i, launcher=launcher, ranks=1)[f"{kind}_tokens_per_s"])
                    for i in repeats
                ]
            )
        out[launcher] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget of each product run")
    parser.add_argument("--bare-seconds", type=float, default=20.0)
    parser.add_argument("--launchers", nargs="+", default=list(LAUNCHERS), choices=LAUNCHERS)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from horovod_llm.log import setup_logging
    from horovod_llm.spark import spark_session

    setup_logging("WARNING")
    load_before = load_average()
    overrides = ["train.precision=fp32"]
    spark = spark_session(local_config(["spark.master=local[2]"]).spark, {"spark.ui.showConsoleProgress": "false"})
    runs: list[dict] = []
    bare: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for repeat in range(args.repeats):
                launchers = args.launchers if repeat % 2 == 0 else args.launchers[::-1]
                for ranks in (1, 2):
                    result = run_bare(ranks, args.bare_seconds, threads=1, overrides=overrides)
                    bare.append({"repeat": repeat, "ranks": ranks, "tokens_per_s": result["tokens_per_s"], "per_process": result["per_process"]})
                    report(f"[{repeat + 1}/{args.repeats}] bare x{ranks}: {result['tokens_per_s']:.0f} tokens/s")
                    for launcher in launchers:
                        run = {"repeat": repeat, **product_run(spark, launcher, ranks, args.minutes, Path(tmp))}
                        runs.append(run)
                        spent = run["loop_seconds"] or {"total": 1.0}
                        shares = ", ".join(f"{k} {v / spent['total']:.0%}" for k, v in spent.items() if k != "total")
                        report(
                            f"[{repeat + 1}/{args.repeats}] {launcher} x{ranks}: in-step {run['in_step_tokens_per_s']:.0f}, "
                            f"loop {run['loop_tokens_per_s']:.0f} tokens/s; loop time: {shares}"
                        )
    finally:
        spark.stop()
    result = {
        "commit": git_commit(),
        "repeats": args.repeats,
        "minutes": args.minutes,
        "precision": "fp32",
        "targets": {"in_step_over_bare": TARGET_IN_STEP, "loop_over_bare": TARGET_LOOP, "scaling": TARGET_SCALING},
        "runs": runs,
        "bare_runs": bare,
        "load_before": load_before,
        "load_after": load_average(),
        **ratios(runs, bare),
    }
    report(
        f"bare: {result['bare']['tokens_per_s_1']:.0f} / {result['bare']['tokens_per_s_2']:.0f} tokens/s on 1 / 2 processes, "
        f"scaling {result['bare']['scaling']:.2f}"
    )
    for launcher in args.launchers:
        row = result[launcher]
        report(
            f"{launcher}: in-step / bare {row['in_step_over_bare_1']:.2f} (1 rank), {row['in_step_over_bare_2']:.2f} (2 ranks), target {TARGET_IN_STEP}; "
            f"loop / bare {row['loop_over_bare_1']:.2f}, {row['loop_over_bare_2']:.2f}, target {TARGET_LOOP}; "
            f"scaling in-step {row['in_step_scaling']:.2f}, loop {row['loop_scaling']:.2f}, target {TARGET_SCALING}"
        )
    write_result(args.json, result)


if __name__ == "__main__":
    main()

"""Two settings of the product, paired in one run: 2 ranks on this host, both Spark
launchers, each pair two runs back to back that differ only in the setting compared.

    .venv/bin/python bench/paired.py --compare {reduction,gc,barrier,binding} [--pairs 3] [--minutes 0.5] [--json PATH]

  reduction  the gradients' average through shared memory (train.shared_memory_allreduce)
             against the backend's allreduce over loopback TCP
  gc         Python's collector at every 50th step on every rank (train.gc_interval=50)
             against its own thresholds (0, the default)
  barrier    the shared-memory reduction's ranks meeting through named pipes against
             the backend's barrier (train.shared_memory_barrier)
  binding    each rank's threads bound to a core of its own against the kernel's
             placement (train.bind_cores all against none)

Needs the bench dataset (bench/prepare.py). Each run is the demo recipe (fp32, 1-thread
ranks, configs/local.yaml's evaluation and checkpoint intervals, `--minutes` of
training, one local[2] Spark session); the arm that goes first alternates from pair to
pair, so that the machine's drift within minutes (10-25% on these VMs) falls on both
arms alike. Per run: in-step and loop tokens/s (as bench/overhead.py measures them) and
rank 0's share of the loop spent waiting at the allreduce; per launcher, the medians of
the pairs' ratios, the first arm (the change) over the second.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from common import git_commit, load_average, median, report, write_result
from launchers import LAUNCHERS, local_spark
from overhead import product_run

# Per comparison, its two arms, the change first: each arm's name and override.
COMPARISONS = {
    "reduction": {"shared_memory": "train.shared_memory_allreduce=true", "tcp": "train.shared_memory_allreduce=false"},
    "gc": {"gc_every_50_steps": "train.gc_interval=50", "gc_automatic": "train.gc_interval=0"},
    "barrier": {"pipes": "train.shared_memory_barrier=pipes", "backend_barrier": "train.shared_memory_barrier=backend"},
    "binding": {"bound": "train.bind_cores=all", "unbound": "train.bind_cores=none"},
}


def one_run(spark, launcher: str, arms: dict, arm: str, minutes: float, folder: Path) -> dict:
    run = product_run(spark, launcher, 2, minutes, folder, overrides=(arms[arm],))
    spent = run["loop_seconds"]
    run["allreduce_wait_share"] = spent["allreduce_wait"] / spent["total"]
    run["arm"] = arm
    return run


def summarise(runs: list[dict], arms: list[str]) -> dict:
    """Per launcher: each arm's medians, and the medians of the pairs' ratios (the
    first arm over the second)."""
    change, base = arms
    out = {}
    for launcher in sorted({r["launcher"] for r in runs}):
        pairs = sorted({r["pair"] for r in runs if r["launcher"] == launcher})

        def arm(pair: int, name: str, launcher: str = launcher) -> dict:
            return next(r for r in runs if r["launcher"] == launcher and r["pair"] == pair and r["arm"] == name)

        row: dict = {}
        for name in arms:
            row[name] = {key: median([arm(p, name)[key] for p in pairs]) for key in ("in_step_tokens_per_s", "loop_tokens_per_s", "allreduce_wait_share")}
            row[name]["reductions"] = sorted({arm(p, name)["gradient_reduction"] for p in pairs})
        for key in ("in_step_tokens_per_s", "loop_tokens_per_s"):
            row[f"{key}_ratio_per_pair"] = [arm(p, change)[key] / arm(p, base)[key] for p in pairs]
            row[f"{key}_ratio"] = median(row[f"{key}_ratio_per_pair"])
        out[launcher] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=sorted(COMPARISONS), required=True)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--minutes", type=float, default=0.5, help="training budget of each run")
    parser.add_argument("--launchers", nargs="+", default=list(LAUNCHERS), choices=LAUNCHERS)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    arms = COMPARISONS[args.compare]
    load_before = load_average()
    spark = local_spark()
    runs: list[dict] = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for pair in range(args.pairs):
                for launcher in args.launchers:
                    order = list(arms) if pair % 2 == 0 else list(arms)[::-1]
                    for name in order:
                        run = {"pair": pair, **one_run(spark, launcher, arms, name, args.minutes, Path(tmp))}
                        runs.append(run)
                        report(
                            f"[pair {pair + 1}/{args.pairs}] {launcher} {name} ({run['gradient_reduction']}): in-step {run['in_step_tokens_per_s']:.0f}, "
                            f"loop {run['loop_tokens_per_s']:.0f} tokens/s, allreduce wait {run['allreduce_wait_share']:.1%} of the loop"
                        )
    finally:
        spark.stop()
    result = {
        "commit": git_commit(),
        "compare": args.compare,
        "arms": arms,
        "pairs": args.pairs,
        "minutes": args.minutes,
        "runs": runs,
        "launchers": summarise(runs, list(arms)),
        "load_before": load_before,
        "load_after": load_average(),
    }
    for launcher, row in result["launchers"].items():
        waits = [f"{row[name]['allreduce_wait_share']:.1%}" for name in arms]
        report(
            f"{launcher}: {' / '.join(arms)}, in-step {row['in_step_tokens_per_s_ratio']:.3f}, loop {row['loop_tokens_per_s_ratio']:.3f}; "
            f"allreduce wait {' against '.join(waits)} of the loop"
        )
    write_result(args.json, result)


if __name__ == "__main__":
    main()

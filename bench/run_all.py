"""`make bench`: every benchmark, one after the other, into bench/results.json and the
measured section of bench/results.md.

    .venv/bin/python bench/run_all.py [--only NAME ...] [--quality-budgets 120] [--rss-sizes-mb 20 200]

Each benchmark runs as its own process and writes its JSON under runs/bench/results/;
this script gathers them with the machine's description (cores, CPU model, load
average before and after each benchmark, date) and rewrites, from results.json alone,
the part of bench/results.md between its two markers and the README's list of
benchmark headlines (bench/render.py). The rest of results.md is written by hand and
labelled as notes from earlier runs, with their dates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import BENCH_RUNS, REPO_ROOT, load_average, machine, report

BENCH = Path(__file__).resolve().parent
RESULTS_JSON = BENCH / "results.json"
RESULTS_MD = BENCH / "results.md"
README = REPO_ROOT / "README.md"


def _sweep(budget_s: int, corpus: str, *variants: str) -> list[str]:
    """bench/sweep.py's command line for a budget and corpus (every variant when none are named)."""
    return ["sweep.py", "--budget", str(budget_s), "--corpus", corpus, *(["--variants", *variants] if variants else [])]


def commands(args) -> dict[str, list[str]]:
    """Each benchmark's command line; its JSON path is appended by `run`."""
    return {
        "prepare": ["prepare.py"],
        "train_throughput": ["train_throughput.py", "--repeats", str(args.repeats)],
        "loader_throughput": ["loader_throughput.py", "--repeats", str(args.repeats)],
        "preprocess_throughput": ["preprocess_throughput.py", "--repeats", str(args.repeats), "--rss-sizes-mb", *map(str, args.rss_sizes_mb)],
        "quality": ["quality.py", "--budgets", *map(str, args.quality_budgets), "--seeds", str(args.quality_seeds)],
        # Word2Vec's effect under the recipe: the recipe with and without it, paired in one run.
        "quality_word2vec": ["quality.py", "--budgets", "90", "--seeds", "1", "--arms", "recipe", "recipe_random_init"],
        # The sweeps behind the recipe (about 40 minutes each): run with --only.
        "sweep_shakespeare_90": _sweep(90, "shakespeare"),
        "sweep_shakespeare_90_combined": _sweep(90, "shakespeare", "ctx64_l2", "ctx64_l2_lr4", "ctx64_l2_v2048", "ctx64_l3_v2048"),
        "sweep_shakespeare_350": _sweep(350, "shakespeare", "recipe", "width_192", "width_256", "dropout_0.1", "lr_1e-3"),
        # Issue 27: the recipe's model in fp32 and bf16, and bf16's speed spent on a wider or
        # deeper model, at both quality budgets (each arm records the CPU it ran on).
        "sweep_precision_90": _sweep(90, "shakespeare", "fp32", "bf16", "bf16_width_192", "bf16_layers_3"),
        "sweep_precision_350": _sweep(350, "shakespeare", "fp32", "bf16", "bf16_width_192", "bf16_dropout_0.1"),
        # Issue 28: 350 s at the trainer's pace after the allocator and wake-up changes (17 epochs).
        "sweep_pace_350": _sweep(350, "shakespeare", "recipe", "width_192_dropout_0.1", "dropout_0.2"),
        # Issue 28: 350 s loses to the reference on every corpus and overfits python_docs (44 epochs):
        # a larger model with more dropout, on the most and the least repeated corpus, beside the reference.
        "sweep_capacity_350": _sweep(
            350,
            "shakespeare",
            "recipe",
            "layers_4_dropout_0.1",
            "layers_4_dropout_0.2",
            "width_192_dropout_0.2",
            "layers_3_width_192_dropout_0.2",
            "context_128_dropout_0.2",
            "reference_bare",
        ),
        "sweep_capacity_python_docs_350": _sweep(350, "python_docs", "recipe", "dropout_0.2", "layers_4_dropout_0.2", "reference_bare"),
        # ... and windows at a shorter stride, nearer the reference's random offsets
        "sweep_stride_350": _sweep(350, "shakespeare", "stride_16", "stride_8", "stride_8_layers_4_dropout_0.1"),
        "sweep_stride_python_docs_350": _sweep(350, "python_docs", "stride_8", "stride_8_dropout_0.2"),
        # Horovod and Spark's TorchDistributor on the same recipe, 1 and 2 ranks.
        "launchers": ["launchers.py", "--repeats", str(args.repeats)],
        # Issue 28: the product's step and loop against the bare runs bracketing each of its runs, 1 and 2 ranks, both launchers.
        "overhead": ["overhead.py", "--repeats", str(args.repeats)],
        # Issue 28: the gradients' average through shared memory against Gloo's TCP, and
        # Python's collector at shared steps against its own moments, and the shared-memory
        # reduction's meeting through pipes against the backend's barrier: 2 ranks, paired.
        "gradient_reduction": ["paired.py", "--compare", "reduction", "--pairs", str(args.repeats)],
        "gc_alignment": ["paired.py", "--compare", "gc", "--pairs", str(args.repeats)],
        "shared_memory_barrier": ["paired.py", "--compare", "barrier", "--pairs", str(args.repeats)],
        # ... and each rank bound to a core of its own against the kernel's placement.
        "core_binding": ["paired.py", "--compare", "binding", "--pairs", str(args.repeats)],
        # py-spy on every rank of a 2-rank run: the loop's time by what it was calling.
        "profile_loop": ["profile_loop.py"],
        # emr/bootstrap.sh of each launcher into fresh venvs (about 12 minutes: it builds horovod once)
        "bootstrap_paths": ["bootstrap_paths.py"],
        "generate_throughput": ["generate_throughput.py", "--threads", "1", "--repeats", str(args.repeats)],
        "end_to_end": ["end_to_end.py", "--repeats", str(args.repeats), "--max-steps", str(args.e2e_max_steps)],
        # after end_to_end: it serves the model that run trained
        "serve_batching": ["serve_batching.py", "--repeats", str(args.repeats)],
        # What batch-invariant decoding (fixed row blocks) costs against unpadded steps.
        "decode_blocks": ["decode_blocks.py", "--repeats", str(args.repeats)],
        # fp32 against bf16 steps for every row of the recipe's model rule, on this CPU.
        "precision": ["precision.py"],
        # Needs one CUDA GPU and only torch (run with --only, or on the lent device machine
        # and gathered): bf16 tokens/s and MFU, NCCL, the loss falling, a GPU-to-CPU checkpoint.
        "gpu_check": ["gpu_check.py"],
    }


# Results of an older checkout, run there with the same script and only gathered here
# (--gather): the loop's profile before issue 28's changes, the overhead bench before
# the allocator change (its figures as committed in 87b39f2), and end to end before the
# rank start-up and wrap-up change (d3ccb1c), on the machine of the run after it. Also
# run on their own: core binding on each launcher's ranks alone, in more pairs than
# `core_binding` (`paired.py --compare binding --pairs 6 --launchers L`), before a bound
# rank polled at the shared-memory meeting (cd943f2).
GATHER_ONLY = ("profile_loop_before", "overhead_before", "end_to_end_before", "core_binding_spark", "core_binding_torch_distributor")
# Run only when named in --only: the sweeps (about 40 minutes each) and the GPU check.
ON_REQUEST = ("sweep", "gpu_check")
JSON_FLAG = {"generate_throughput": "--json-file", "gpu_check": "--out"}


def run(name: str, command: list[str], folder: Path) -> dict:
    out = folder / f"{name}.json"
    out.unlink(missing_ok=True)
    flag = JSON_FLAG.get(name, "--json")
    full = [sys.executable, str(BENCH / command[0]), *command[1:], *([flag, str(out)] if name != "prepare" else [])]
    report(f"== {name}: {' '.join(command)}")
    load_before, started = load_average(), time.perf_counter()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    completed = subprocess.run(full, cwd=REPO_ROOT, env=env, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    entry = {"seconds": seconds, "date": machine()["date"], "load_before": load_before, "load_after": load_average(), "status": completed.returncode}
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-6000:])
        report(f"!! {name} failed with status {completed.returncode} after {seconds:.0f} s")
        return entry
    report(f"   ({seconds:.0f} s, load {entry['load_before'][0]} -> {entry['load_after'][0]})")
    if out.exists():
        entry["result"] = json.loads(out.read_text())
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", help="run only these benchmarks (the others keep their last results)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quality-budgets", type=float, nargs="+", default=[90.0, 350.0], help="seconds of training per quality run")
    parser.add_argument("--quality-seeds", type=int, default=3)
    parser.add_argument("--rss-sizes-mb", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--e2e-max-steps", type=int, default=0, help="0: the demo's own steps, so that end_to_end times `make demo`")
    parser.add_argument("--render-only", action="store_true", help="rewrite results.md and the README from results.json; run nothing")
    parser.add_argument(
        "--gather",
        nargs="+",
        metavar="NAME",
        help="take these benchmarks' results as their own scripts wrote them under runs/bench/results/NAME.json, "
        "without running them again (for a long benchmark run on its own, or one resumed after a stop), then render",
    )
    args = parser.parse_args()
    if args.render_only:
        write_reports(json.loads(RESULTS_JSON.read_text()))
        return
    if args.gather:
        results = json.loads(RESULTS_JSON.read_text())
        for name in args.gather:
            results["benchmarks"][name] = gathered(name, BENCH_RUNS / "results" / f"{name}.json", known=commands(args))
        RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
        write_reports(results)
        return
    folder = BENCH_RUNS / "results"
    folder.mkdir(parents=True, exist_ok=True)
    previous = json.loads(RESULTS_JSON.read_text()) if RESULTS_JSON.exists() else {"benchmarks": {}}
    started = time.perf_counter()
    results = {"machine": machine(), "settings": vars(args), "benchmarks": dict(previous.get("benchmarks", {}))}
    for name, command in commands(args).items():
        if (args.only and name not in args.only and name != "prepare") or (not args.only and name.startswith(ON_REQUEST)):
            continue
        results["benchmarks"][name] = run(name, command, folder)
        RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    results["wall_seconds"] = time.perf_counter() - started
    results["machine"]["load_average_end"] = load_average()
    RESULTS_JSON.write_text(json.dumps(results, indent=2) + "\n")
    write_reports(results)
    report(f"== all done in {results['wall_seconds'] / 60:.1f} minutes: {RESULTS_JSON.relative_to(REPO_ROOT)}, {RESULTS_MD.relative_to(REPO_ROOT)}, README.md")


def gathered(name: str, path: Path, known: dict) -> dict:
    """A benchmark's entry from the JSON its script wrote when run on its own."""
    if name not in known and name not in GATHER_ONLY:
        raise SystemExit(f"unknown benchmark {name!r}: pick one of bench/run_all.py's names")
    if not path.exists():
        raise SystemExit(f"no results for {name} at {path}: run its script with --json {path} first")
    return {"gathered_from": str(path.relative_to(REPO_ROOT)), "status": 0, "result": json.loads(path.read_text())}


def write_reports(results: dict) -> None:
    """The measured section of results.md and the README's headlines, from `results`."""
    from render import HEADLINES, MEASURED, QUALITY, RECIPE, headlines, quality_table, recipe_table, render, replace_between

    RESULTS_MD.write_text(replace_between(RESULTS_MD.read_text(), MEASURED, render(results)))
    readme = replace_between(README.read_text(), HEADLINES, headlines(results))
    readme = replace_between(readme, QUALITY, quality_table(results))
    README.write_text(replace_between(readme, RECIPE, recipe_table()))


if __name__ == "__main__":
    main()

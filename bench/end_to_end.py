"""End to end: the wall time of `horovod-llm run --config configs/local.yaml` (what
`make demo` runs after set-up), split by stage, so that the fixed overheads show.

    .venv/bin/python bench/end_to_end.py [--repeats 3] [--max-steps N] [--json PATH]

A fresh output folder (runs/bench/end-to-end), so every stage runs: Spark start,
preprocessing (tokenizer, windows, Word2Vec), training on 2 Horovod ranks (split into
starting the ranks, setting them up, the training loop and wrapping up, from
`stats/pipeline.json`), and generating the sample. --max-steps shortens training (the
demo trains train.max_steps of configs/local.yaml); 0 keeps the demo's.

--repeats runs the command that many times, one after the other. The result is the run
whose seconds outside the training loop are the median (a real run, so its stages add
up), with every run's seconds beside it: one run of a shared VM moved preprocessing by
1.3 s between two versions that did not touch it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import time

from common import BENCH_RUNS, LOCAL_CONFIG, REPO_ROOT, report, write_result

OUTPUT = BENCH_RUNS / "end-to-end"


def stage_rows(result: dict) -> list[tuple[str, float]]:
    """(stage, seconds) of a result of this benchmark, in the order they happen; shared
    with render.py's table."""
    stages, split = result["stages_s"], result["train_stage_s"]
    return [
        ("Python start, imports, exit", result["process_start_and_exit_s"]),
        ("Spark start", stages["spark_start"]),
        ("preprocess", stages["preprocess"]),
        ("train: Horovod start (launch, processes, rendezvous)", split["horovod_start"]),
        ("train: rank set-up (data, model, broadcasts, peak)", split["rank_setup"]),
        (f"train: training loop ({result['steps']} steps, with evaluation and checkpoints)", split["training_loop"]),
        ("train: wrap-up (model.zip, statistics, curves)", split["wrap_up"]),
        ("generation", stages["generate"]),
    ]


def outside_loop_s(result: dict) -> float:
    """Seconds of the whole command outside its training loop: start-up, preprocessing,
    the ranks' start and set-up, wrap-up, generation and exit (issue 28's target)."""
    return result["wall_s"] - result["train_stage_s"]["training_loop"]


def run_once(overrides: list[str]) -> dict:
    """One `horovod-llm run` from a fresh output folder, split by stage."""
    shutil.rmtree(OUTPUT, ignore_errors=True)
    command = [str(REPO_ROOT / ".venv" / "bin" / "horovod-llm"), "run", "--config", str(LOCAL_CONFIG), *overrides]
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
    started = time.perf_counter()
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        raise SystemExit(f"horovod-llm run failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    stats = json.loads((OUTPUT / "stats" / "pipeline.json").read_text())
    summary = json.loads((OUTPUT / "stats" / "summary.json").read_text())
    manifest = json.loads((OUTPUT / "dataset" / "manifest.json").read_text())
    stages = stats["stages"]
    return {
        "command": " ".join(["horovod-llm", "run", "--config", "configs/local.yaml", *(o.replace(str(REPO_ROOT) + "/", "") for o in overrides)]),
        "wall_s": wall,
        "stages_s": stages,
        "train_stage_s": stats["train_stage"],
        "process_start_and_exit_s": wall - sum(stages.values()),
        "preprocess_stages_s": {name: stage["seconds"] for name, stage in manifest["stages"].items()},
        "steps": summary["steps"],
        "training_tokens_per_s": summary["tokens_per_s"],
        "mfu_mean": summary["mfu_mean"],
        "final_val_loss": summary["final"].get("val_loss"),
    }


def median_run(runs: list[dict]) -> dict:
    """The run with the median seconds outside the training loop (the lower middle of an
    even count), with every run's seconds and stages beside it."""
    chosen = sorted(runs, key=outside_loop_s)[(len(runs) - 1) // 2]
    return {
        **chosen,
        "repeats": len(runs),
        "outside_loop_s_runs": [outside_loop_s(r) for r in runs],
        "runs": [{k: r[k] for k in ("wall_s", "stages_s", "train_stage_s", "process_start_and_exit_s", "preprocess_stages_s", "steps")} for r in runs],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-steps", type=int, default=0, help="0: the demo's train.max_steps")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("overrides", nargs="*", help="more section.key=value overrides")
    args = parser.parse_args()
    overrides = [f"output_url={OUTPUT}", *([f"train.max_steps={args.max_steps}"] if args.max_steps else []), *args.overrides]
    runs = []
    for repeat in range(args.repeats):
        runs.append(run_once(overrides))
        report(f"[{repeat + 1}/{args.repeats}] {runs[-1]['wall_s']:.1f} s, {outside_loop_s(runs[-1]):.1f} s of it outside the training loop")
    result = median_run(runs)
    for name, seconds in stage_rows(result):
        report(f"{name:62s} {seconds:7.1f} s")
    report(f"{'total wall time':62s} {result['wall_s']:7.1f} s")
    report(f"outside the training loop, each run: {', '.join(f'{s:.1f}' for s in result['outside_loop_s_runs'])} s")
    report(f"preprocess stages: {result['preprocess_stages_s']}")
    write_result(args.json, result)


if __name__ == "__main__":
    main()

"""End to end: the wall time of `horovod-llm run --config configs/local.yaml` (what
`make demo` runs after set-up), split by stage, so that the fixed overheads show.

    .venv/bin/python bench/end_to_end.py [--max-steps N] [--json PATH]

A fresh output folder (runs/bench/end-to-end), so every stage runs: Spark start,
preprocessing (tokenizer, windows, Word2Vec), training on 2 Horovod ranks (split into
starting the ranks, setting them up, the training loop and wrapping up, from
`stats/pipeline.json`), and generating the sample. --max-steps shortens training (the
demo trains train.max_steps of configs/local.yaml); 0 keeps the demo's.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-steps", type=int, default=0, help="0: the demo's train.max_steps")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("overrides", nargs="*", help="more section.key=value overrides")
    args = parser.parse_args()
    shutil.rmtree(OUTPUT, ignore_errors=True)
    overrides = [f"output_url={OUTPUT}", *([f"train.max_steps={args.max_steps}"] if args.max_steps else []), *args.overrides]
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
    accounted = sum(stages.values())
    result = {
        "command": " ".join(["horovod-llm", "run", "--config", "configs/local.yaml", *(o.replace(str(REPO_ROOT) + "/", "") for o in overrides)]),
        "wall_s": wall,
        "stages_s": stages,
        "train_stage_s": stats["train_stage"],
        "process_start_and_exit_s": wall - accounted,
        "preprocess_stages_s": {name: stage["seconds"] for name, stage in manifest["stages"].items()},
        "steps": summary["steps"],
        "training_tokens_per_s": summary["tokens_per_s"],
        "mfu_mean": summary["mfu_mean"],
        "final_val_loss": summary["final"].get("val_loss"),
    }
    for name, seconds in stage_rows(result):
        report(f"{name:62s} {seconds:7.1f} s")
    report(f"{'total wall time':62s} {wall:7.1f} s")
    report(f"preprocess stages: {result['preprocess_stages_s']}")
    write_result(args.json, result)


if __name__ == "__main__":
    main()

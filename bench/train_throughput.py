"""Training throughput, model FLOPs utilisation and Horovod scaling of the default model.

    .venv/bin/python bench/train_throughput.py [--repeats 3] [--steps 6] [--json PATH] [key=value ...]

Needs the bench dataset (bench/prepare.py). Each repetition runs three layouts, each a
fresh set of processes running bench/train_rank.py:

  1x2  one process, 2 torch threads, batch 2 x train.batch_size (the default global batch)
  1x1  `horovodrun -np 1`, 1 thread, batch train.batch_size
  2x1  `horovodrun -np 2`, 1 thread each, batch train.batch_size each: the demo's layout

Each measures its tokens/s with batches from memory and from the Petastorm loader. MFU =
model FLOP/s (`GPT.flops_per_token`: 6N + 12 L H Q T) / the fp32 matmul peak that
training uses (`metrics.calibrated_peak_flops`: the best reading of this machine type
and layout, every rank at once), reported beside the raw model FLOP/s. Scaling efficiency =
throughput(2x1) / (2 x throughput(1x1)), same per-rank batch, from memory. Every figure
is the median over repetitions of ratios taken within one repetition; the layouts
alternate, so that load from other processes hits them alike. Targets: MFU >= 0.5,
scaling efficiency >= 0.9.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO_ROOT, load_average, median, report, write_result

RANK_SCRIPT = str(Path(__file__).resolve().parent / "train_rank.py")


def horovodrun(num_proc: int) -> list[str]:
    return [
        sys.executable, "-m", "horovod.runner.launch",
        "-np", str(num_proc), "-H", f"localhost:{num_proc}", "--gloo", "--network-interface", "lo",
    ]  # fmt: skip


def run_layout(name: str, args, out: Path, extra_env: dict) -> dict:
    """One layout, one repetition: the rank script's JSON."""
    ranks, threads = (int(x) for x in name.split("x"))
    batch_size = args.batch_size * (2 if name == "1x2" else 1)
    data = "memory,petastorm" if name != "1x1" else "memory"
    command = [sys.executable, RANK_SCRIPT, "--out", str(out), "--threads", str(threads), "--batch-size", str(batch_size)]
    command += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--data", data, *(["--compile"] if args.compile else []), *args.overrides]
    if name != "1x2":
        command = horovodrun(ranks) + command
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **extra_env}
    completed = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True)
    if completed.returncode != 0:
        sys.stderr.write(completed.stdout[-4000:] + completed.stderr[-4000:])
        raise SystemExit(f"{name}: rank script failed with status {completed.returncode}")
    return json.loads(out.read_text())


def rates(run: dict, kind: str) -> dict:
    """Tokens/s, model FLOP/s and MFU of the median step."""
    tokens_per_step = run["ranks"] * run["batch_size"] * run["block_size"]
    return {"tokens_per_s": tokens_per_step / run[kind]["step_s"], "model_gflops": run[kind]["model_flops_per_s"] / 1e9, "mfu": run[kind]["mfu"]}


def summarize(runs: dict[str, list[dict]]) -> dict:
    """Medians over repetitions; ratios are taken within a repetition first."""
    out: dict = {"layouts": {}}
    for name, reps in runs.items():
        layout = {"peak_gflops": median([r["peak_flops"] / 1e9 for r in reps])}
        for kind in ("memory", "petastorm"):
            if kind in reps[0]:
                layout[kind] = {
                    "tokens_per_s": median([rates(r, kind)["tokens_per_s"] for r in reps]),
                    "model_gflops": median([rates(r, kind)["model_gflops"] for r in reps]),
                    "mfu": median([rates(r, kind)["mfu"] for r in reps]),
                    "step_s": median([r[kind]["step_s"] for r in reps]),
                }
        if "petastorm" in layout:
            layout["petastorm_over_memory"] = median([rates(r, "petastorm")["tokens_per_s"] / rates(r, "memory")["tokens_per_s"] for r in reps])
        out["layouts"][name] = layout
    one, two = runs["1x1"], runs["2x1"]
    # Where scaling loses: CPU seconds per step of a rank (threads x cores it keeps busy)
    # in 2x1 over 1x1 (contention for caches and memory, Horovod's thread), and the
    # wait for the slower rank.
    out["cpu_per_step_2x1_over_1x1"] = median(
        [median([r["memory"]["cpu_s"] for r in b["step_s_per_rank"]]) / a["memory"]["cpu_s"] for a, b in zip(one, two, strict=True)]
    )
    out["scaling_efficiency"] = median([rates(b, "memory")["tokens_per_s"] / (2 * rates(a, "memory")["tokens_per_s"]) for a, b in zip(one, two, strict=True)])
    out["allreduce_s"] = median([r["allreduce_s"] for r in two])
    out["allreduce_share_of_step"] = median([r["allreduce_s"] / r["memory"]["step_s"] for r in two])
    out["exposed_sync_share_of_step"] = median([r["memory"]["sync_s"] / r["memory"]["step_s"] for r in two])
    out["gradient_mb"] = two[0]["gradient_bytes"] / 1e6
    out["flops_per_token"] = two[0]["flops_per_token"]
    out["parameters"] = two[0]["parameters"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per data source and run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="windows per rank (1x2 takes twice as many)")
    parser.add_argument("--layouts", default="1x2,1x1,2x1")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model in every layout")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="extra environment for the ranks (e.g. HOROVOD_CYCLE_TIME=1)")
    parser.add_argument("--json", help="write the results to this file")
    parser.add_argument("overrides", nargs="*", help="section.key=value for configs/local.yaml (e.g. model.dropout=0)")
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    layouts = args.layouts.split(",")
    runs: dict[str, list[dict]] = {name: [] for name in layouts}
    loads = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for name in layouts:
                run = run_layout(name, args, Path(tmp) / f"{name}-{repeat}.json", extra_env)
                runs[name].append(run)
                loads.append(load_average()[0])
                line = ", ".join(
                    f"{kind} {rates(run, kind)['tokens_per_s']:6.0f} tok/s (MFU {rates(run, kind)['mfu']:.2f})"
                    for kind in ("memory", "petastorm")
                    if kind in run
                )
                report(f"[{repeat + 1}/{args.repeats}] {name}: {line}, peak {run['peak_flops'] / 1e9:.0f} GFLOP/s ({'/'.join(run['peak_source'])})")
    if not {"1x1", "2x1"} <= set(layouts):
        print(json.dumps({name: [rates(r, "memory") for r in reps] for name, reps in runs.items()}, indent=2))
        return
    result = summarize(runs)
    result.update({"repeats": args.repeats, "steps": args.steps, "overrides": args.overrides, "env": extra_env, "load_1min_during": loads, "runs": runs})
    for name, layout in result["layouts"].items():
        parts = [
            f"{kind}: {layout[kind]['tokens_per_s']:6.0f} tok/s, {layout[kind]['model_gflops']:.0f} model GFLOP/s, MFU {layout[kind]['mfu']:.2f}"
            for kind in ("memory", "petastorm")
            if kind in layout
        ]
        extra = f", loader/memory {layout['petastorm_over_memory']:.2f}" if "petastorm_over_memory" in layout else ""
        report(f"{name}: {'; '.join(parts)} (peak {layout['peak_gflops']:.0f} GFLOP/s){extra}")
    report(
        f"scaling efficiency 2x1 / (2 x 1x1): {result['scaling_efficiency']:.2f} (target >= 0.90); "
        f"CPU seconds per step of a rank, 2x1 / 1x1: {result['cpu_per_step_2x1_over_1x1']:.2f}"
    )
    report(
        f"allreduce of {result['gradient_mb']:.1f} MB of gradients alone: {1000 * result['allreduce_s']:.0f} ms "
        f"= {100 * result['allreduce_share_of_step']:.1f}% of a 2x1 step; exposed wait after backward {100 * result['exposed_sync_share_of_step']:.1f}%"
    )
    write_result(args.json, result)


if __name__ == "__main__":
    main()

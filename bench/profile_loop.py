"""Where a rank's training loop spends its time, sampled by py-spy on every rank.

    .venv/bin/python bench/profile_loop.py [--minutes 1] [--ranks 2] [--json PATH]

Needs the bench dataset (bench/prepare.py) and py-spy (the dev extra). Runs `horovod-llm
train` on a copy of it (the demo recipe, `train.launcher=spark`, 1-thread ranks, fp32,
the demo's evaluation and checkpoint intervals) under `py-spy record --subprocesses`,
then splits each rank's samples inside `train_loop` by what the loop was calling: the
step's forward pass, backward pass, waiting for the allreduce, metrics, optimizer;
reading batches; logging, evaluation, checkpoints. It needs no help from the code it
profiles, so it measures an older checkout as it measures this one.
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common import DATASET_URL, REPO_ROOT, git_commit, report, write_result

# (pattern on the frame below train_loop or train_step, category): first match wins.
LOOP_CATEGORIES = [
    (r"^train_step", None),  # split further by STEP_CATEGORIES
    (r"window_batches|<listcomp>|<genexpr>|__next__|BatchedDataLoader", "load"),
    (r"_log_step|Interval|_remaining|show|set_loss|info", "logging"),
    (r"_evaluate|validate|validation_batches", "evaluation"),
    (r"_save_checkpoint", "checkpoints"),
    (r"write_run_outputs|run_summary", "run outputs"),
    (r"allreduce|log_epoch|commit|flush", "epochs and commits"),
]
STEP_CATEGORIES = [
    (r"backward", "backward"),
    (r"synchronize|average_|allreduce", "allreduce wait"),
    (r"batch_metrics", "metrics"),
    (r"clip_grad", "clipping"),
    (r"step|unscale_|update|zero_grad", "optimizer"),
    (r"forward|_call_impl|_wrapped_call_impl|autocast|GPT", "forward"),
]


LOOP_FRAMES = ("train_loop ", "_train_entry ")


def _category(frame: str, table) -> str | None:
    name = frame.split(" (", 1)[0]
    return next((category for pattern, category in table if re.search(pattern, name)), "other")


def read_samples(raw: str) -> list[tuple[list[str], int]]:
    """py-spy's raw (collapsed) stacks; a process's command line may hold newlines."""
    entries, pending = [], ""
    for line in raw.split("\n"):
        pending = f"{pending}\n{line}" if pending else line
        match = re.search(r" (\d+)$", pending)
        if match:
            entries.append((pending[: match.start()].split(";"), int(match.group(1))))
            pending = ""
    return entries


def shares_by_rank(raw: str) -> list[dict]:
    """Per rank process (those that ran train_loop): its samples in the loop by category."""
    ranks: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for frames, count in read_samples(raw):
        # the loop's body: train_loop's, or since the live statistics _train_entry's (one per
        # loop entry); an older checkout has only the first
        inside = [i for i, f in enumerate(frames) if f.startswith(LOOP_FRAMES)]
        if not inside:
            continue
        process = next(f for f in reversed(frames) if f.startswith("process "))
        below = frames[inside[-1] + 1 :] or ["(train_loop) "]
        category = _category(below[0], LOOP_CATEGORIES)
        if category is None:
            category = _category(below[1], STEP_CATEGORIES) if len(below) > 1 else "other"
            category = f"step: {category}"
        ranks[process.split(":")[0]][category] += count
    out = []
    for process, counter in sorted(ranks.items()):
        total = sum(counter.values())
        out.append({"process": process, "samples": total, "shares": {k: v / total for k, v in counter.most_common()}})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=1.0)
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--rate", type=int, default=50, help="py-spy samples per second")
    parser.add_argument("--label", default="", help="what was profiled (e.g. the commit), for the report")
    parser.add_argument("--json")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if not py_spy:
        raise SystemExit("py-spy is not installed: pip install py-spy (the dev extra has it)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        out.mkdir()
        for part in ("dataset", "tokenizer", "embeddings"):
            (out / part).symlink_to(Path(DATASET_URL) / part)
        raw = Path(tmp) / "samples.txt"
        train = [
            str(Path(sys.executable).parent / "horovod-llm"), "train", "--config", "configs/local.yaml", f"output_url={out}",
            f"train.num_proc={args.ranks}", "spark.master=local[2]", f"train.max_minutes={args.minutes}", "train.precision=fp32",
            "train.threads_per_rank=1", "progress=false",
        ]  # fmt: skip
        command = [py_spy, "record", "--subprocesses", "--nonblocking", "--rate", str(args.rate), "--format", "raw", "-o", str(raw), "--", *train]
        completed = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
        if completed.returncode != 0 or not raw.exists():
            sys.stderr.write(completed.stderr[-4000:])
            raise SystemExit(f"the profiled run failed with status {completed.returncode}")
        ranks = shares_by_rank(raw.read_text())
    categories = sorted({c for r in ranks for c in r["shares"]}, key=lambda c: -sum(r["shares"].get(c, 0) for r in ranks))
    mean = {c: sum(r["shares"].get(c, 0.0) for r in ranks) / len(ranks) for c in categories}
    for category in categories:
        report(f"{category:24s} {mean[category]:6.1%}  (" + ", ".join(f"{r['shares'].get(category, 0):.1%}" for r in ranks) + ")")
    write_result(args.json, {"label": args.label, "commit": git_commit(), "minutes": args.minutes, "ranks": ranks, "mean_shares": mean})


if __name__ == "__main__":
    main()

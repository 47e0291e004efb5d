"""Does the Petastorm loader keep up with training? Windows/s one rank's reader and loader
deliver, against the windows/s one training rank consumes.

    .venv/bin/python bench/loader_throughput.py [--repeats 3] [--seconds 3] [--json PATH]

Needs the bench dataset (bench/prepare.py). The loader is `dataset.window_batches` as
training opens it: rank 0 of 2, train.batch_size windows per batch, shuffled row
groups, repeating. Consumption is the training step of configs/local.yaml's model on
one thread (a rank of the demo's 2x1 layout) with batches from memory. Both are
measured in this process, one after the other in each repetition, with torch on one
thread as in a rank. Also reported: the CPU time the loader spends per window, and so
the share of a core it takes while feeding one rank. Target: loader / consumption >= 10.
"""

from __future__ import annotations

import argparse
import time

from common import DATASET_URL, default_gpt_config, local_config, median, report, write_result


def loader_rate(batch_size: int, seconds: float, seed: int) -> dict:
    """A fresh reader: seconds to its first batch, then windows/s and CPU s/window."""
    from horovod_llm.data import dataset

    opened = time.perf_counter()
    with dataset.window_batches(DATASET_URL, "train", 0, 2, batch_size, num_epochs=None, seed=seed, shuffle=True) as batches:
        next(batches)
        first = time.perf_counter() - opened
        windows, cpu_started, started = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - started < seconds:
            windows += len(next(batches))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    return {"first_batch_s": first, "windows_per_s": windows / wall, "cpu_s_per_window": cpu / windows}


def consumption_rate(model, optimizer, batch_size: int, steps: int, grad_clip: float) -> float:
    """Windows/s one training rank consumes (median step, after one warm-up step)."""
    import torch

    from horovod_llm.training.step import train_step

    ids = torch.randint(4, model.config.vocab_size, (batch_size, model.config.block_size + 1), generator=torch.Generator().manual_seed(0))
    seconds = []
    for index in range(steps + 1):
        started = time.perf_counter()
        train_step(model, optimizer, [ids], grad_clip)
        if index:
            seconds.append(time.perf_counter() - started)
    return batch_size / median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="loader reading time per repetition")
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per repetition")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    import torch

    from horovod_llm.data.manifest import read_manifest
    from horovod_llm.log import quiet_library_warnings
    from horovod_llm.model import GPT
    from horovod_llm.training.comm import HorovodCollectives
    from horovod_llm.training.step import distributed_optimizer

    quiet_library_warnings()
    config = local_config()
    comm = HorovodCollectives(config.train)  # one rank, with the product's Horovod settings
    torch.set_num_threads(1)
    tc = config.train
    manifest = read_manifest(DATASET_URL)
    model = GPT(default_gpt_config(config, manifest.tokenizer.vocab_size)).train()
    optimizer = distributed_optimizer(model, tc, tc.learning_rate, comm)
    reps = []
    for repeat in range(args.repeats):
        loader = loader_rate(tc.batch_size, args.seconds, seed=tc.seed + repeat)
        consumed = consumption_rate(model, optimizer, tc.batch_size, args.steps, tc.grad_clip)
        rep = {**loader, "consumed_windows_per_s": consumed, "ratio": loader["windows_per_s"] / consumed}
        rep["loader_core_share_at_consumption"] = consumed * loader["cpu_s_per_window"]
        reps.append(rep)
        report(
            f"[{repeat + 1}/{args.repeats}] loader {loader['windows_per_s']:7.0f} windows/s (first batch after {loader['first_batch_s']:.2f} s), "
            f"training consumes {consumed:5.1f} windows/s: ratio {rep['ratio']:.0f}"
        )
    result = {key: median([r[key] for r in reps]) for key in reps[0]}
    result.update({"batch_size": tc.batch_size, "repeats": args.repeats, "runs": reps})
    report(
        f"loader {result['windows_per_s']:.0f} windows/s vs one rank's consumption {result['consumed_windows_per_s']:.1f} windows/s: "
        f"ratio {result['ratio']:.0f} (target >= 10); the loader needs {1e6 * result['cpu_s_per_window']:.0f} CPU-us per window, "
        f"{100 * result['loader_core_share_at_consumption']:.2f}% of a core while feeding one rank"
    )
    write_result(args.json, result)


if __name__ == "__main__":
    main()

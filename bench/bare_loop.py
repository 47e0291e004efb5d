"""The bare loop: the ceiling the product's training step is measured against.

    .venv/bin/python bench/bare_loop.py [--ranks 2] [--seconds 20] [--threads 1] [--json PATH] [key=value ...]

Starts `--ranks` independent plain processes at once, each training configs/local.yaml's
model (the demo recipe's: the same GPT, batch, AdamW with weight-decay groups, gradient
clipping, torch threads and malloc settings as a rank) on windows of the bench dataset
(bench/prepare.py) held in memory, as nanoGPT's loop trains on its token array, with a
rank's arithmetic settings (subnormals flushed to zero, one thread) and cores (bound as
Horovod's ranks are, train.bind_cores, where they fill the cores): no
loader, no allreduce, no metrics, no logging. Real windows, not random ids: a step on
the corpus's ids ran 4-8% faster than one on ids drawn uniformly from the vocabulary
(same process, alternated, Intel Xeon), which made the product's 1-rank loop look faster
than its own ceiling. Each reports the tokens/s of its steps after a
warm-up; the arm's figure is their sum, which is what 2 ranks on the same cores could at
best reach together. bench/overhead.py runs it beside the product.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time

from common import DATASET_URL, default_gpt_config, local_config, report, write_result

# Batches held in memory, drawn in a random order: 1,024 windows, enough that the steps do
# not replay a handful of batches.
MEMORY_BATCHES = 64


def windows_in_memory(batch_size: int, seed: int) -> list:
    """MEMORY_BATCHES batches of the bench dataset's training windows, read before any
    step is timed."""
    import itertools

    import torch

    from horovod_llm.data import dataset

    with dataset.window_batches(DATASET_URL, "train", 0, 1, batch_size, num_epochs=None, seed=seed, shuffle=True) as batches:
        return [torch.from_numpy(batch) for batch in itertools.islice(batches, MEMORY_BATCHES)]


def bare_rank(overrides: list[str], threads: int, seconds: float, warmup_steps: int, precision: str, seed: int, place: tuple[int, int], results) -> None:
    """One process's loop, as nanoGPT's train.py does it on a CPU; `place`: (its index,
    the processes started), bound to cores as a rank in that place would be."""
    import torch

    from horovod_llm.data.manifest import read_manifest
    from horovod_llm.model import GPT
    from horovod_llm.training.affinity import bind_rank
    from horovod_llm.training.precision import Precision
    from horovod_llm.training.train import prepare_rank_process

    config = local_config(overrides)
    train = config.train
    cores = bind_rank(train.bind_cores != "none", *place, threads)  # a rank's cores, as Horovod's ranks are bound
    prepare_rank_process(threads)  # a rank's threads, subnormal flushing and malloc settings
    torch.manual_seed(seed)
    batches = windows_in_memory(train.batch_size, seed)
    model = GPT(default_gpt_config(config, read_manifest(DATASET_URL).tokenizer.vocab_size))
    optimizer = torch.optim.AdamW(model.param_groups(train.weight_decay), lr=train.learning_rate, betas=(0.9, 0.95))
    autocast = Precision(precision, "cpu").autocast
    generator = torch.Generator().manual_seed(seed)
    model.train()
    steps, started = 0, None
    while True:
        ids = batches[int(torch.randint(len(batches), (1,), generator=generator))]
        with autocast():
            _, loss = model(ids[:, :-1], ids[:, 1:])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        optimizer.step()
        steps += 1
        if steps == warmup_steps:
            started, timed_from = time.perf_counter(), steps
        elif started is not None and time.perf_counter() - started >= seconds:
            break
    elapsed = time.perf_counter() - started
    tokens = (steps - timed_from) * train.batch_size * model.config.block_size
    results.put({"tokens_per_s": tokens / elapsed, "steps": steps - timed_from, "step_s": elapsed / (steps - timed_from), "cores": cores})


def run_bare(ranks: int, seconds: float, threads: int = 1, overrides: list[str] = (), precision: str = "fp32", warmup_steps: int = 10) -> dict:
    """`ranks` bare processes at once: each one's tokens/s and their sum."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, as a rank has
    results = context.Queue()
    processes = [
        context.Process(target=bare_rank, args=(list(overrides), threads, seconds, warmup_steps, precision, 1000 + r, (r, ranks), results))
        for r in range(ranks)
    ]
    for process in processes:
        process.start()
    per_process = [results.get(timeout=seconds + 300) for _ in processes]
    for process in processes:
        process.join()
        if process.exitcode:
            raise SystemExit(f"a bare process failed with status {process.exitcode}")
    return {
        "ranks": ranks,
        "threads": threads,
        "precision": precision,
        "data": "windows",  # the bench dataset's, in memory (random ids before 2026-12-06)
        "tokens_per_s": sum(p["tokens_per_s"] for p in per_process),
        "per_process": per_process,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    parser.add_argument("--json")
    parser.add_argument("overrides", nargs="*", help="section.key=value for configs/local.yaml")
    args = parser.parse_args()
    result = run_bare(args.ranks, args.seconds, args.threads, args.overrides, args.precision)
    each = ", ".join(f"{p['tokens_per_s']:.0f}" for p in result["per_process"])
    report(f"bare loop, {args.ranks} process(es) x {args.threads} thread(s), {args.precision}: {result['tokens_per_s']:.0f} tokens/s ({each})")
    write_result(args.json, result)
    if not args.json:
        print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

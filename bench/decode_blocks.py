"""What batch-invariant decoding costs: `GPT.decode_step` in fixed blocks of ROW_BLOCK
rows (what `serve` runs, so that a request's output does not depend on its neighbours)
against all rows in one unpadded call (what the kernels would pick by batch size).

    .venv/bin/python bench/decode_blocks.py [--sizes demo large] [--batches 1 2 4 8 13 16]
        [--threads 1] [--steps 200] [--repeats 5] [--json PATH]

Random weights of the serving sizes (bench/serve_batching.py's SIZES): only the
arithmetic matters here. Each step decodes one token for each of B rows at positions
spread over the context; the two arms alternate, --repeats times each (medians), so
that load from elsewhere slows both alike. tokens/s is B over the step's time.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import machine, median, report, write_result
from serve_batching import SIZES

from horovod_llm.model import GPT, ROW_BLOCK, GPTConfig, KVCache, padded_rows

VOCAB = 1024  # the recipe's vocabulary for the embedded corpus


def step_seconds(model: GPT, rows: int, row_block: int | None, steps: int) -> float:
    """Mean seconds of one decode_step of `rows` rows."""
    c = model.config
    cache = KVCache(c, padded_rows(rows) if row_block else rows)
    generator = torch.Generator().manual_seed(rows)
    ids = torch.randint(0, c.vocab_size, (rows,), generator=generator)
    positions = torch.randint(c.block_size // 4, c.block_size - 1, (rows,), generator=generator)
    for _ in range(3):  # warm-up: kernels, caches
        model.decode_step(ids, cache, positions, row_block=row_block)
    started = time.perf_counter()
    for _ in range(steps):
        model.decode_step(ids, cache, positions, row_block=row_block)
    return (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["demo", "large"])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 13, 16])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (serve's default: 1)")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = {"machine": machine(), "row_block": ROW_BLOCK, "threads": args.threads, "steps": args.steps, "repeats": args.repeats, "sizes": {}}
    for size in args.sizes:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=VOCAB, **SIZES[size])).eval()
        rows = {}
        for batch in args.batches:
            times = {"blocks": [], "unpadded": []}
            for _ in range(args.repeats):
                times["blocks"].append(step_seconds(model, batch, ROW_BLOCK, args.steps))
                times["unpadded"].append(step_seconds(model, batch, None, args.steps))
            blocks, unpadded = median(times["blocks"]), median(times["unpadded"])
            rows[str(batch)] = {
                "tokens_per_s_blocks": batch / blocks,
                "tokens_per_s_unpadded": batch / unpadded,
                "blocks_over_unpadded_time": blocks / unpadded,
            }
            report(f"{size} B={batch:2d}: blocks {batch / blocks:8.0f} tok/s, unpadded {batch / unpadded:8.0f} tok/s, time ratio {blocks / unpadded:.2f}")
        result["sizes"][size] = {"model": {**SIZES[size], "vocab_size": VOCAB, "parameters": model.num_parameters()}, "batches": rows}
    write_result(args.json, result)


if __name__ == "__main__":
    main()

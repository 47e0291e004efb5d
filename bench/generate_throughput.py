"""Generation speed with and without the key/value cache, on the default model.

    .venv/bin/python bench/generate_throughput.py [--new-tokens 256] [--repeats 3] [--threads N]

The model is the demo's (configs/local.yaml with the recipe for the embedded corpus)
with random weights: speed does not depend on
what the weights learned. Greedy decoding, one sample, a BOS-only prompt. Prints
tokens/s for each mode (median of --repeats, after a warm-up) and their ratio; the
issue's target is a ratio of at least 3. Timings only: nothing here is asserted.

On a machine whose cores are busy with other work, several torch threads spin-wait on
each other between the cached path's many tiny operations: try --threads 1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import local_config  # noqa: E402

from horovod_llm.data.tokenizer import BOS_ID  # noqa: E402
from horovod_llm.model import GPT  # noqa: E402
from horovod_llm.training.job import gpt_config  # noqa: E402


def default_model() -> GPT:
    config = local_config()
    args = gpt_config(config, config.tokenizer.vocab_size, config.data.window_size)
    torch.manual_seed(0)
    return GPT(args).eval()


def median_seconds(model: GPT, new_tokens: int, repeats: int) -> dict[bool, tuple[float, torch.Tensor]]:
    """{use_cache: (median seconds, output)}; the two modes alternate, so that a burst of
    load from other processes slows both alike."""
    idx = torch.tensor([[BOS_ID]])
    seconds: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    for use_cache in (True, False):
        model.generate(idx, 16, temperature=0, use_cache=use_cache)  # warm-up
    for _ in range(repeats):
        for use_cache in (True, False):
            started = time.perf_counter()
            outputs[use_cache] = model.generate(idx, new_tokens, temperature=0, use_cache=use_cache)
            seconds[use_cache].append(time.perf_counter() - started)
    return {mode: (statistics.median(values), outputs[mode]) for mode, values in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")
    parser.add_argument("--json-file", help="also write the results to this file (for bench/run_all.py)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = default_model()
    timed = median_seconds(model, args.new_tokens, args.repeats)
    (cached_s, out_cached), (uncached_s, out_uncached) = timed[True], timed[False]
    cached, uncached = args.new_tokens / cached_s, args.new_tokens / uncached_s
    result = {
        "model": {"parameters": model.num_parameters(), "block_size": model.config.block_size, "vocab_size": model.config.vocab_size},
        "new_tokens": args.new_tokens,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "tokens_per_second_with_cache": round(cached, 1),
        "tokens_per_second_without_cache": round(uncached, 1),
        "ratio": round(cached / uncached, 2),
        "same_greedy_output": bool(torch.equal(out_cached, out_uncached)),
    }
    if args.json_file:
        Path(args.json_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_file).write_text(json.dumps(result, indent=2) + "\n")
    if args.json:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        sys.stdout.write(
            f"model: {result['model']['parameters'] / 1e6:.1f}M parameters, block_size {model.config.block_size}, "
            f"{args.new_tokens} new tokens, {result['threads']} threads\n"
            f"with cache:    {cached:8.1f} tokens/s\n"
            f"without cache: {uncached:8.1f} tokens/s\n"
            f"ratio:         {cached / uncached:8.2f}x (target >= 3)\n"
            f"same greedy output: {result['same_greedy_output']}\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

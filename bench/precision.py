"""fp32 against bf16 training steps, for every row of the recipe's model rule, on this CPU.

    .venv/bin/python bench/precision.py [--seconds 4] [--threads 1] [--json PATH]

For each model row of `recipe.MODEL` (its shape, context and the vocabulary it is paired
with), one process trains with `training.step.train_step` (AdamW with clipping, the
optimizer wrapper of one in-process rank) on random ids, 16 windows a step, in fp32 and
under bf16 autocast, the arms alternating step by step so that load hits both alike.
Reported per row: tokens/s of the median step in each precision and their ratio, MFU of
each against the matmul peak of its own precision (`metrics.measure_matmul_flops`, best
of readings), and what `train.precision=auto` decides for the row here (its own
calibration, `precision.measure`, and rule). For the first row (the short budgets'),
`train.compile` too: the step through `torch.compile` in the precision auto chose, its
compilation time and its gain. The machine record names the CPU and its kernel flags
(avx512_bf16, amx_bf16): the ratios belong to them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

# A cold compile, as a user's first run meets it: not torch's on-disk cache of an earlier run.
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))

import torch  # noqa: E402
from common import report, write_result

from horovod_llm.config import TrainConfig
from horovod_llm.model import GPT, GPTConfig
from horovod_llm.training import recipe
from horovod_llm.training.calibration import measure
from horovod_llm.training.comm import TorchCollectives
from horovod_llm.training.metrics import measure_matmul_flops
from horovod_llm.training.precision import DTYPES, MIN_SPEEDUP, Precision, choose
from horovod_llm.training.step import distributed_optimizer, train_step

BATCH = 16


def rows() -> list[dict]:
    """The rule's model rows, each with the vocabulary of the corpus size it usually meets
    (the vocabulary rows in order, the last repeated)."""
    vocabularies = [size for _, size in recipe.VOCABULARY]
    found = []
    for i, (limit, n_layer, n_head, n_embd, context, lr) in enumerate(recipe.MODEL):
        vocabulary = vocabularies[min(i, len(vocabularies) - 1)]
        found.append(
            {"budget_up_to_s": limit, "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "block_size": context, "vocab_size": vocabulary, "lr": lr}
        )
    return found


def compiled_gain(row: dict, name: str, seconds: float, comm) -> dict:
    """Eager against torch.compile'd steps of the row's model in precision `name`."""
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=row["vocab_size"], block_size=row["block_size"], n_layer=row["n_layer"], n_head=row["n_head"], n_embd=row["n_embd"])
    model = GPT(config)
    optimizer = distributed_optimizer(model, TrainConfig(), row["lr"], comm)
    ids = torch.randint(1, config.vocab_size, (BATCH, config.block_size + 1), generator=torch.Generator().manual_seed(1))
    precision = Precision(name)
    compiled = torch.compile(model)
    started = time.perf_counter()
    train_step(compiled, optimizer, [ids], 1.0, precision)  # compiles forward and backward
    compile_s = time.perf_counter() - started
    train_step(model, optimizer, [ids], 1.0, precision)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    started = time.perf_counter()
    while len(times["eager"]) < 5 or time.perf_counter() - started < seconds:
        for arm, forward in (("eager", model), ("compiled", compiled)):
            step_started = time.perf_counter()
            train_step(forward, optimizer, [ids], 1.0, precision)
            times[arm].append(time.perf_counter() - step_started)
    eager, fast = statistics.median(times["eager"]), statistics.median(times["compiled"])
    return {"precision": name, "compile_s": compile_s, "eager_step_s": eager, "compiled_step_s": fast, "compiled_over_eager": eager / fast}


def time_arms(row: dict, seconds: float, comm) -> dict:
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=row["vocab_size"], block_size=row["block_size"], n_layer=row["n_layer"], n_head=row["n_head"], n_embd=row["n_embd"])
    model = GPT(config)
    optimizer = distributed_optimizer(model, TrainConfig(), row["lr"], comm)
    ids = torch.randint(1, config.vocab_size, (BATCH, config.block_size + 1), generator=torch.Generator().manual_seed(1))
    arms = {name: Precision(name) for name in ("fp32", "bf16")}
    times: dict[str, list[float]] = {name: [] for name in arms}
    for precision in arms.values():
        train_step(model, optimizer, [ids], 1.0, precision)  # warm-up
    started = time.perf_counter()
    while len(times["fp32"]) < 3 or time.perf_counter() - started < seconds:
        for name, precision in arms.items():
            step_started = time.perf_counter()
            train_step(model, optimizer, [ids], 1.0, precision)
            times[name].append(time.perf_counter() - step_started)
    fp32_step, bf16_step = measure(model, BATCH, torch.device("cpu"), seconds=min(seconds, 2.0))
    tokens = BATCH * config.block_size
    flops_per_token = model.flops_per_token()
    result = {"params": model.num_parameters(), "flops_per_token": flops_per_token, "steps_timed": len(times["fp32"])}
    for name in arms:
        step_s = statistics.median(times[name])
        result[name] = {"step_s": step_s, "tokens_per_s": tokens / step_s, "model_gflops": flops_per_token * tokens / step_s / 1e9}
    result["bf16_over_fp32"] = result["bf16"]["tokens_per_s"] / result["fp32"]["tokens_per_s"]
    result["auto"] = {"bf16_speedup": fp32_step / bf16_step, "chooses": choose("auto", fp32_step / bf16_step)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="at least this long per row (and 3 steps per arm)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peaks = {name: measure_matmul_flops(seconds=1.0, dtype=DTYPES[name]) for name in ("fp32", "bf16")}
    report(f"matmul peak, 1024 x 1024, {args.threads} thread(s): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    comm = TorchCollectives(TrainConfig())
    measured = []
    try:
        for row in rows():
            result = {**row, **time_arms(row, args.seconds, comm)}
            for name in ("fp32", "bf16"):
                result[name]["mfu"] = result[name]["model_gflops"] * 1e9 / peaks[name]
            measured.append(result)
            report(
                f"{row['n_layer']} x {row['n_embd']}, context {row['block_size']}, vocabulary {row['vocab_size']}: "
                f"fp32 {result['fp32']['tokens_per_s']:,.0f} tokens/s (MFU {result['fp32']['mfu']:.0%}), "
                f"bf16 {result['bf16']['tokens_per_s']:,.0f} (MFU {result['bf16']['mfu']:.0%}): {result['bf16_over_fp32']:.2f}x; "
                f"auto chooses {result['auto']['chooses']} (its calibration: {result['auto']['bf16_speedup']:.2f}x)"
            )
        compile_row = {**rows()[0], "compile": compiled_gain(rows()[0], measured[0]["auto"]["chooses"], args.seconds, comm)}
        c = compile_row["compile"]
        report(
            f"torch.compile, first row in {c['precision']}: {c['compile_s']:.0f} s to compile, then {c['compiled_over_eager']:.2f}x the eager step "
            f"({c['eager_step_s'] * 1000:.0f} -> {c['compiled_step_s'] * 1000:.0f} ms)"
        )
    finally:
        comm.close()
    write_result(
        args.json,
        {
            "threads": args.threads, "batch": BATCH, "min_speedup": MIN_SPEEDUP, "peak_gflops": {k: v / 1e9 for k, v in peaks.items()},
            "rows": measured, "compile": c,
        },
    )  # fmt: skip


if __name__ == "__main__":
    main()

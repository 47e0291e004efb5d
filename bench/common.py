"""Shared by the benchmarks: the machine, medians, the default model and the bench dataset.

Benchmarks run as scripts (`python bench/NAME.py`), so this module is imported as
`common` from the script's own folder.
"""

from __future__ import annotations

import faulthandler
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = REPO_ROOT / "configs" / "local.yaml"
# Everything the benchmarks write besides bench/results.*: git-ignored (runs/).
BENCH_RUNS = REPO_ROOT / "runs" / "bench"
# The embedded corpus preprocessed with configs/local.yaml, shared by the training and
# loader benchmarks (bench/prepare.py builds it; a rerun with the same config skips).
DATASET_URL = str(BENCH_RUNS / "dataset")


def cpu_model() -> str:
    """The CPU model's name, as training keys its peak and calibration readings by it."""
    from horovod_llm.training.metrics import cpu_model as product_cpu_model

    return product_cpu_model()


# The instruction sets that decide which kernels torch's CPU matmuls take (bf16 on
# AVX512_BF16 and AMX): machines of one session differ by these, so each figure says.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_flags() -> list[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            present = set(line.split(":", 1)[1].split())
            return [flag for flag in KERNEL_FLAGS if flag in present]
    return []


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine() -> dict:
    """What a figure was measured on: cores, CPU, load at the time, versions, date."""
    import torch

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "cpu_flags": cpu_flags(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


# What the benches themselves write into the checkout while they run: a change there is
# not a change to the code measured (every run of bench/run_all.py read "-dirty" from them).
BENCH_OUTPUTS = ("bench/results.json", "bench/results.md", "README.md")


def git_commit() -> str:
    """The checkout a figure was measured on ("-dirty" when it had uncommitted changes
    other than the benches' own outputs)."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":!{path}" for path in BENCH_OUTPUTS))
    return git("rev-parse", "--short", "HEAD") + ("-dirty" if changed else "")


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def timed(work: Callable[[], object]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def local_config(overrides: Sequence[str] = ()):
    """configs/local.yaml with the recipe resolved for the embedded corpus (the bench
    dataset's), as the demo runs it."""
    from horovod_llm.config import load_config
    from horovod_llm.data.corpus import embedded_corpus
    from horovod_llm.training import recipe

    return recipe.resolve(load_config(LOCAL_CONFIG, list(overrides)), sum(f.size for f in embedded_corpus()))


def default_gpt_config(config=None, vocab_size: int | None = None):
    """configs/local.yaml's model: vocab_size from tokenizer.vocab_size (or the dataset's),
    block_size = data.window_size."""
    from horovod_llm.training.job import gpt_config

    config = config or local_config()
    return gpt_config(config, vocab_size or config.tokenizer.vocab_size, config.data.window_size)


def write_result(path: str | None, result: dict) -> None:
    """The benchmark's results as JSON (for bench/run_all.py), with the machine's state."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")


def report(line: str) -> None:
    """Benchmarks print their numbers as they come: they are the report."""
    print(line, flush=True)


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """End the benchmark, with every thread's stack on stderr, if the block runs past
    `seconds`: a backstop behind the product's own watchdog (train.stall_timeout, which
    watches the ranks, not the bench's code or its Spark session around them), so that a
    hang stops the bench with the evidence instead of holding the machine.
    faulthandler's timer runs on its own C thread, so it fires even while the main
    thread is blocked inside Spark, Horovod or Gloo, where a Python timer could not."""
    report(f"(time limit {seconds:.0f} s: {what})")
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()

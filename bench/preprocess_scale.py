"""Driver memory and throughput of `preprocess` as the corpus grows (issue 3).

Generates corpora of the given sizes (lines of the embedded Shakespeare, shuffled into
1 MB files), runs the Spark job on each in a fresh process, and prints the Python
driver's peak RSS, the JVM's peak RSS (in local mode the JVM is driver and executors),
and MB/s. The driver must stay flat: it never collects the corpus or the windows.

    .venv/bin/python bench/preprocess_scale.py --sizes-mb 20 200
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FILE_BYTES = 1 << 20


def generate_corpus(folder: Path, size_mb: int, seed: int = 0) -> int:
    from horovod_llm.data.corpus import decode, embedded_corpus

    lines = []
    for f in embedded_corpus():
        text, _ = decode(Path(f.url).read_bytes(), f.url)
        lines.extend(line for line in text.splitlines() if line.strip())
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written, index = 0, 0
    while written < size_mb * 1e6:
        chosen = rng.choice(len(lines), 30_000)
        block = "\n".join(lines[i] for i in chosen)[:FILE_BYTES] + "\n"
        (folder / f"part-{index:05d}.txt").write_text(block)
        written += len(block.encode())
        index += 1
    return written


def jvm_peak_rss_mb(spark) -> float:
    pid = spark.sparkContext._gateway.proc.pid
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(corpus: str, output: str) -> None:
    """One measured run, in its own process so that peak RSS is this run's alone."""
    from horovod_llm.config import load_config
    from horovod_llm.data.preprocess import run_preprocess
    from horovod_llm.log import setup_logging
    from horovod_llm.spark import spark_session

    setup_logging("WARNING")
    config = load_config(Path(__file__).parent.parent / "configs" / "local.yaml", [f"data.input_url={corpus}", f"output_url={output}"])
    spark = spark_session(config.spark)
    started = time.perf_counter()
    manifest = run_preprocess(config, spark, force=True)
    seconds = time.perf_counter() - started
    result = {
        "seconds": seconds,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "jvm_peak_rss_mb": jvm_peak_rss_mb(spark),
        "windows": manifest.splits["train"].windows + manifest.splits["val"].windows,
        "stages": {k: v["seconds"] for k, v in manifest.stages.items()},
    }
    spark.stop()
    print(json.dumps(result))


def measure(sizes_mb: list[int], folder: Path) -> dict[int, dict]:
    """Generate each corpus under `folder`, preprocess it in a fresh process, and print a line."""
    results = {}
    for size in sizes_mb:
        corpus = folder / f"corpus-{size}"
        written = generate_corpus(corpus, size)
        env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(corpus), str(folder / f"out-{size}")], capture_output=True, text=True, env=env, check=True
        )
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["corpus_mb"] = written / 1e6
        result["mb_per_s"] = result["corpus_mb"] / result["seconds"]
        results[size] = result
        print(
            f"{result['corpus_mb']:7.1f} MB: {result['seconds']:6.1f} s, {result['mb_per_s']:5.2f} MB/s, "
            f"driver peak RSS {result['driver_peak_rss_mb']:6.0f} MB, JVM peak RSS {result['jvm_peak_rss_mb']:6.0f} MB, stages {result['stages']}",
            flush=True,
        )
    return results


def rss_ratio(results: dict[int, dict]) -> dict:
    """Driver (and JVM) peak RSS of the largest corpus over the smallest's."""
    sizes = sorted(results)
    small, large = results[sizes[0]], results[sizes[-1]]
    return {
        "sizes_mb": [sizes[0], sizes[-1]],
        "driver_rss_ratio": large["driver_peak_rss_mb"] / small["driver_peak_rss_mb"],
        "jvm_rss_ratio": large["jvm_peak_rss_mb"] / small["jvm_peak_rss_mb"],
        "corpus_ratio": large["corpus_mb"] / small["corpus_mb"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes-mb", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--child", nargs=2, metavar=("CORPUS", "OUTPUT"), help=argparse.SUPPRESS)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        results = measure(args.sizes_mb, Path(tmp))
    if len(results) >= 2:
        ratio = rss_ratio(results)
        print(
            f"driver peak RSS ratio {ratio['sizes_mb'][1]} MB / {ratio['sizes_mb'][0]} MB: {ratio['driver_rss_ratio']:.2f} "
            f"(corpus ratio {ratio['corpus_ratio']:.1f}); JVM: {ratio['jvm_rss_ratio']:.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

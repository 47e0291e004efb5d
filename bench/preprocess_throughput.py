"""Preprocessing throughput: the Spark job on local[2] against one plain Python process
doing the same work, and the driver's peak memory as the corpus grows.

    .venv/bin/python bench/preprocess_throughput.py [--size-mb 20] [--repeats 3] [--rss-sizes-mb 20 200] [--json PATH]

Both sides take the same generated corpus (lines of the embedded Shakespeare in 1 MB
files, bench/preprocess_scale.py) and the bench dataset's tokenizer
(`tokenizer.model_url`, so neither trains one; bench/prepare.py), Word2Vec off. The
Spark side is `run_preprocess` in a running local[2] session: list, read and decode in
tasks, split by hash, encode, cut windows and write Parquet parts in tasks, manifest.
The baseline does the same in one process with the same functions (`corpus.decode`,
`corpus.split_documents`, `corpus.split_of`, `preprocess.write_windows_part`: same
tokenizer, windows and Parquet parts, the parts cut at the same number of doc_id
ranges). MB/s is corpus bytes over wall seconds; repetitions alternate the two sides.
Target: Spark / baseline >= 1.5.

Driver peak RSS: bench/preprocess_scale.py (the whole default job, tokenizer training
and Word2Vec included, each size in a fresh process); target: largest / smallest <= 1.3.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import preprocess_scale
from common import BENCH_RUNS, DATASET_URL, local_config, median, report, write_result


def _rounded(values: dict) -> dict:
    return {key: round(value, 1) for key, value in values.items()}


def single_process(config) -> dict:
    """The Spark job's read, split, encode, window and write steps, in this process."""
    from horovod_llm import layout, storage
    from horovod_llm.data import corpus, tokenizer
    from horovod_llm.data.preprocess import encoding_partitions, row_groups_per_part, unit_size, units_of_paragraphs, write_windows_part

    data = config.data
    docs: dict[str, list[tuple[str, str]]] = {split: [] for split in layout.SPLITS}
    files = corpus.list_corpus(data.input_url)
    on_blank_lines = units_of_paragraphs(data.split_on_blank_lines, len(files))
    for f in files:
        text, _ = corpus.decode(storage.read_bytes(f.url), f.url, data.normalization)
        if text is None:
            continue
        for doc_id, doc_text in corpus.split_documents(f.doc_id, text, on_blank_lines, unit_size(data.unit_chars, sum(g.size for g in files))):
            docs[corpus.split_of(doc_id, data.val_fraction)].append((doc_id, doc_text))
    processor = tokenizer.load(storage.read_bytes(config.tokenizer.model_url))
    counts = {}
    for split, items in docs.items():
        items.sort()
        num_bytes = sum(len(text.encode("utf-8")) for _, text in items)
        # Spark's local[2] has a default parallelism of 2.
        num_parts = encoding_partitions(data.num_partitions, 2, num_bytes, len(items))
        groups = row_groups_per_part(data.max_ranks, num_parts)
        windows = 0
        for part, chunk in enumerate(np.array_split(np.arange(len(items)), num_parts)):
            url = storage.join(layout.split_url(config.output_url, split), f"part-{part:05d}.parquet")
            texts = (items[i][1] for i in chunk)
            windows += write_windows_part(processor, texts, url, split, data.window_size, data.overlap, groups, config.train.seed + part)["windows"]
        counts[split] = windows
    return counts


class CpuMeter:
    """CPU seconds (user + system) of this process, the Spark JVM and its Python workers.

    Python workers come and go: once one exits and is reaped, its seconds count in its
    parent's "children" times and it is no longer listed. Each process therefore counts
    its own seconds plus those of its reaped children, so no exited worker is missed and
    none is counted twice.
    """

    def __init__(self, spark):
        import psutil

        self.psutil = psutil
        self.jvm = psutil.Process(spark.sparkContext._gateway.proc.pid)

    @staticmethod
    def _seconds(process) -> float:
        times = process.cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    def read(self) -> dict:
        # The driver's own seconds only: its children (the JVM and, below it, the workers)
        # are read one by one while they run.
        driver = self.psutil.Process().cpu_times()
        seconds = {"driver": driver.user + driver.system, "jvm": self._seconds(self.jvm), "workers": 0.0}
        for child in self.jvm.children(recursive=True):  # pyspark.daemon and its workers (reused)
            with contextlib.suppress(self.psutil.Error):  # a worker that just exited
                seconds["workers"] += self._seconds(child)
        return seconds

    @staticmethod
    def delta(before: dict, after: dict) -> dict:
        return {key: after[key] - before[key] for key in before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=20, help="corpus for the throughput comparison")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-sizes-mb", type=int, nargs="*", default=[20, 200], help="corpora for the driver memory check (none: skip it)")
    parser.add_argument("--json", help="write the results to this file")
    args = parser.parse_args()

    from horovod_llm.data.preprocess import run_preprocess
    from horovod_llm.log import setup_logging
    from horovod_llm.spark import spark_session

    setup_logging("WARNING")
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    work = BENCH_RUNS / "preprocess"
    shutil.rmtree(work, ignore_errors=True)
    corpus_dir = work / f"corpus-{args.size_mb}"
    corpus_mb = preprocess_scale.generate_corpus(corpus_dir, args.size_mb) / 1e6
    tokenizer_url = str(Path(DATASET_URL) / "tokenizer" / "tokenizer.model")

    def config_for(output: Path):
        overrides = [
            f"data.input_url={corpus_dir}",
            f"output_url={output}",
            f"tokenizer.model_url={tokenizer_url}",
            "embedding.word2vec.enabled=false",
            "model.init_from_word2vec=false",
            "spark.master=local[2]",
        ]
        return local_config(overrides)

    started = time.perf_counter()
    spark = spark_session(config_for(work / "out").spark, {"spark.ui.showConsoleProgress": "false"})
    spark_start_s = time.perf_counter() - started
    meter = CpuMeter(spark)
    reps = []
    try:
        # The session's first job also warms the JVM up and starts the Python workers: a
        # fixed cost, reported apart from the throughput of the jobs that follow.
        cpu_before, started = meter.read(), time.perf_counter()
        run_preprocess(config_for(work / "spark-first"), spark, force=True)
        first_job_s, first_job_cpu = time.perf_counter() - started, meter.delta(cpu_before, meter.read())
        report(f"first job of the session (JVM warm-up, Python workers start): {first_job_s:.1f} s, CPU seconds {_rounded(first_job_cpu)}")
        for repeat in range(args.repeats):
            out = work / f"spark-{repeat}"
            cpu_before, started = meter.read(), time.perf_counter()
            manifest = run_preprocess(config_for(out), spark, force=True)
            spark_s, spark_cpu = time.perf_counter() - started, meter.delta(cpu_before, meter.read())
            out = work / f"single-{repeat}"
            cpu_before, started = meter.read(), time.perf_counter()
            windows = single_process(config_for(out))
            single_s, single_cpu = time.perf_counter() - started, meter.delta(cpu_before, meter.read())
            spark_windows = {split: manifest.splits[split].windows for split in windows}
            rep = {"spark_s": spark_s, "single_s": single_s, "ratio": single_s / spark_s, "spark_windows": spark_windows, "single_windows": windows}
            rep.update({"spark_cpu": spark_cpu, "single_cpu": single_cpu, "stages": {k: v["seconds"] for k, v in manifest.stages.items()}})
            reps.append(rep)
            report(
                f"[{repeat + 1}/{args.repeats}] {corpus_mb:.1f} MB: Spark local[2] {corpus_mb / spark_s:5.2f} MB/s ({spark_s:.1f} s), "
                f"one process {corpus_mb / single_s:5.2f} MB/s ({single_s:.1f} s): ratio {rep['ratio']:.2f}"
            )
    finally:
        spark.stop()
    result = {
        "corpus_mb": corpus_mb,
        "spark_start_s": spark_start_s,
        "spark_mb_per_s": corpus_mb / median([r["spark_s"] for r in reps]),
        "single_mb_per_s": corpus_mb / median([r["single_s"] for r in reps]),
        "ratio": median([r["ratio"] for r in reps]),
        "ratio_with_spark_start": median([r["single_s"] / (r["spark_s"] + spark_start_s) for r in reps]),
        "first_job_s": first_job_s,
        "first_job_cpu_s": first_job_cpu,
        "windows": {"spark": reps[0]["spark_windows"], "single": reps[0]["single_windows"]},
        "cpu_s": {
            "spark": {key: median([r["spark_cpu"][key] for r in reps]) for key in reps[0]["spark_cpu"]},
            "spark_total": median([sum(r["spark_cpu"].values()) for r in reps]),
            "single_total": median([sum(r["single_cpu"].values()) for r in reps]),
        },
        "repeats": args.repeats,
        "runs": reps,
    }
    # With no other load, 2 cores and perfect overlap, Spark's wall time is at least half its
    # CPU seconds: the best ratio its CPU cost allows.
    result["ratio_bound_from_cpu"] = 2 * result["cpu_s"]["single_total"] / result["cpu_s"]["spark_total"]
    report(
        f"CPU seconds per run: Spark {_rounded(result['cpu_s']['spark'])}, one process {result['cpu_s']['single_total']:.1f}: bound on the ratio {result['ratio_bound_from_cpu']:.2f}"
    )
    report(
        f"Spark local[2] {result['spark_mb_per_s']:.2f} MB/s vs one process {result['single_mb_per_s']:.2f} MB/s: ratio {result['ratio']:.2f} "
        f"(target >= 1.5); counting the session's start ({spark_start_s:.1f} s) too: {result['ratio_with_spark_start']:.2f}"
    )
    if len(args.rss_sizes_mb) >= 2:
        with tempfile.TemporaryDirectory() as tmp:
            result["rss"] = {str(k): v for k, v in preprocess_scale.measure(args.rss_sizes_mb, Path(tmp)).items()}
        ratio = preprocess_scale.rss_ratio({int(k): v for k, v in result["rss"].items()})
        result["rss_ratio"] = ratio
        report(
            f"driver peak RSS {ratio['sizes_mb'][1]} MB / {ratio['sizes_mb'][0]} MB of corpus: {ratio['driver_rss_ratio']:.2f} (target <= 1.3); "
            f"JVM (driver and executors in local mode): {ratio['jvm_rss_ratio']:.2f}"
        )
    shutil.rmtree(work, ignore_errors=True)
    write_result(args.json, result)


if __name__ == "__main__":
    main()

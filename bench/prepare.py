"""The dataset the training and loader benchmarks read: the embedded corpus, preprocessed
with configs/local.yaml into runs/bench/dataset (skipped when it is already complete
for this config and corpus).

    .venv/bin/python bench/prepare.py [--force]
"""

from __future__ import annotations

import argparse
import os
import time

from common import DATASET_URL, local_config, report


def prepare(force: bool = False) -> dict:
    from horovod_llm.data.preprocess import run_preprocess
    from horovod_llm.spark import spark_session

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    config = local_config([f"output_url={DATASET_URL}", "spark.master=local[2]"])
    spark = spark_session(config.spark, {"spark.ui.showConsoleProgress": "false"})
    try:
        return run_preprocess(config, spark, force=force)
    finally:
        spark.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    from horovod_llm.log import setup_logging

    setup_logging("WARNING")
    started = time.perf_counter()
    manifest = prepare(args.force)
    train = manifest.splits["train"]
    report(f"bench dataset {DATASET_URL}: {train.windows} training windows, {train.tokens} tokens ({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()

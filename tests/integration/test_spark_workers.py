"""Spark's Python workers, as a real local session starts them (horovod_llm.spark_daemon)."""

import gc
import importlib
import sys
import time

import pytest

from horovod_llm.spark_daemon import PRELOAD

pytestmark = pytest.mark.spark


def _worker_view(_):
    started = time.perf_counter()
    importlib.invalidate_caches()  # what PySpark's worker does before every task
    return sys.path, time.perf_counter() - started


def _preloaded(_):
    return [name for name in PRELOAD if name in sys.modules], gc.get_freeze_count()


def test_python_workers_have_no_archive_on_their_path_and_pay_little_per_task(spark):
    (path, seconds), *_ = spark.sparkContext.parallelize([0], 1).map(_worker_view).collect()
    assert not [entry for entry in path if entry.endswith((".jar", "pyspark.zip", "-src.zip"))]
    # With Spark's archives on the path, zipimport re-read pyspark.zip once per imported
    # subpackage and the jar's 5,221 entries: 75 ms here.
    assert seconds < 0.02, f"importlib.invalidate_caches() took {seconds * 1000:.0f} ms in a worker"


def test_workers_start_with_the_tasks_modules_loaded_and_frozen(spark):
    (loaded, frozen), *_ = spark.sparkContext.parallelize([0], 1).map(_preloaded).collect()
    assert loaded == list(PRELOAD)
    assert frozen > 50_000  # pandas, pyarrow and the rest: out of reach of the gc.collect() after each task

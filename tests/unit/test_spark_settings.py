"""The settings every SparkSession gets: a short-lived local JVM compiles with C1 only,
and Python workers start from horovod_llm.spark_daemon, which keeps Spark's archives off
their path and preloads the tasks' modules."""

import sys
import zipfile
from pathlib import Path

from horovod_llm import jvm_archive
from horovod_llm.config import SparkConfig
from horovod_llm.spark import LOCAL_DRIVER_JAVA_OPTIONS, session_settings
from horovod_llm.spark_daemon import preload, worker_path

DAEMON = "spark.python.daemon.module"
JAVA_OPTIONS = "spark.driver.extraJavaOptions"


def test_a_local_session_compiles_with_c1_and_a_cluster_keeps_the_jvms_default(monkeypatch):
    monkeypatch.setattr(jvm_archive, "java_options", lambda: "")  # no class archive: tests/unit/test_jvm_archive.py
    assert session_settings(SparkConfig(master="local[*]"))[JAVA_OPTIONS] == LOCAL_DRIVER_JAVA_OPTIONS == "-XX:TieredStopAtLevel=1"
    monkeypatch.setattr(jvm_archive, "java_options", lambda: "-XX:SharedArchiveFile=/a.jsa")
    assert session_settings(SparkConfig(master="local[*]"))[JAVA_OPTIONS] == "-XX:TieredStopAtLevel=1 -XX:SharedArchiveFile=/a.jsa"
    assert JAVA_OPTIONS not in session_settings(SparkConfig(master="spark://10.0.0.1:7077"))
    assert JAVA_OPTIONS not in session_settings(SparkConfig(master="yarn"))


def test_the_users_spark_conf_wins_over_ours():
    settings = session_settings(SparkConfig(master="local[2]", conf={JAVA_OPTIONS: "-Xss4m", DAEMON: "pyspark.daemon"}))
    assert (settings[JAVA_OPTIONS], settings[DAEMON]) == ("-Xss4m", "pyspark.daemon")
    assert session_settings(SparkConfig(master="local[2]"), {DAEMON: "pyspark.daemon"})[DAEMON] == "pyspark.daemon"


def test_every_session_starts_its_workers_from_our_daemon():
    for master in ("local[*]", "yarn", "spark://10.0.0.1:7077"):
        assert session_settings(SparkConfig(master=master))[DAEMON] == "horovod_llm.spark_daemon"


def _archive(path: Path, *names: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for name in names:
            archive.writestr(name, "")
    return str(path)


def test_pips_pyspark_leaves_workers_no_archive_on_their_path(tmp_path):
    site = tmp_path / "site-packages"
    (site / "pyspark").mkdir(parents=True)
    (site / "pyspark" / "__init__.py").write_text("")
    lib = site / "pyspark" / "python" / "lib"
    path = [
        _archive(lib / "pyspark.zip", "pyspark/__init__.py"),
        _archive(lib / "py4j-0.10.9.7-src.zip", "py4j/__init__.py"),
        _archive(site / "pyspark" / "jars" / "spark-core_2.12-3.5.9.jar", "org/apache/spark/SparkContext.class"),
        str(tmp_path / "python311.zip"),  # absent, as in most Pythons
        str(site),
    ]
    assert worker_path(path) == [str(tmp_path / "python311.zip"), str(site)]


def test_a_spark_installations_zips_stay_and_only_its_python_free_jars_go(tmp_path):
    spark_home = tmp_path / "usr" / "lib" / "spark"
    (spark_home / "python" / "pyspark").mkdir(parents=True)  # its sources, not on the path
    (spark_home / "python" / "pyspark" / "__init__.py").write_text("")
    zips = [
        _archive(spark_home / "python" / "lib" / "pyspark.zip", "pyspark/__init__.py"),
        _archive(spark_home / "python" / "lib" / "py4j-0.10.9.7-src.zip", "py4j/__init__.py"),
    ]
    core = _archive(spark_home / "jars" / "spark-core_2.12-3.5.9.jar", "org/apache/spark/SparkContext.class")
    packed = _archive(tmp_path / "assembly.jar", "pyspark/__init__.py", "org/apache/spark/SparkContext.class")
    assert worker_path([*zips, core, packed, "/usr/lib/python3.11"]) == [*zips, packed, "/usr/lib/python3.11"]


def test_preloading_imports_what_it_can_and_names_what_failed():
    assert preload(("json", "horovod_llm_no_such_module", "csv")) == ["horovod_llm_no_such_module"]
    assert {"json", "csv"} <= set(sys.modules)

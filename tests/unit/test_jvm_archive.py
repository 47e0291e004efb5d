"""The JVM class archive (horovod_llm/jvm_archive.py): found only for the Java and class
path it was made for, never used truncated, and never left half-written."""

from pathlib import Path

import pytest

from horovod_llm import jvm_archive


@pytest.fixture
def installation(tmp_path, monkeypatch):
    """A Java, a Spark home with two jars and an archive folder, all under tmp_path."""
    java_home = tmp_path / "jdk"
    (java_home / "bin").mkdir(parents=True)
    (java_home / "bin" / "java").write_text("#!/bin/sh\n")
    (java_home / "lib" / "server").mkdir(parents=True)
    (java_home / "lib" / "server" / "libjvm.so").write_bytes(b"jvm")
    spark_home = tmp_path / "spark"
    (spark_home / "jars").mkdir(parents=True)
    for name in ("spark-core.jar", "spark-sql.jar"):
        (spark_home / "jars" / name).write_bytes(name.encode())
    monkeypatch.setenv("JAVA_HOME", str(java_home))
    monkeypatch.delenv("SPARK_CONF_DIR", raising=False)
    monkeypatch.setattr(jvm_archive, "_spark_home", lambda: spark_home)
    monkeypatch.setattr(jvm_archive, "ARCHIVE_DIR", tmp_path / "cache" / "jvm")
    return java_home, spark_home


def _place(key: str, size: int, written: int | None = None) -> Path:
    path = jvm_archive.archive_path(key, size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * (size if written is None else written))
    return path


def test_the_key_follows_the_java_build_and_the_class_path(installation, monkeypatch, tmp_path):
    java_home, spark_home = installation
    key = jvm_archive.archive_key()
    assert jvm_archive.archive_key() == key  # stable
    monkeypatch.setenv("SPARK_CONF_DIR", str(tmp_path / "conf"))  # first on a session's class path
    assert jvm_archive.archive_key() != key
    monkeypatch.delenv("SPARK_CONF_DIR")
    (spark_home / "jars" / "hadoop-aws.jar").write_bytes(b"more")
    with_a_jar = jvm_archive.archive_key()
    assert with_a_jar != key
    (java_home / "lib" / "server" / "libjvm.so").write_bytes(b"another build")
    assert jvm_archive.archive_key() not in (key, with_a_jar)


def test_no_java_no_key(installation, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", "/nonexistent")
    assert jvm_archive.archive_key() is None and jvm_archive.java_options() == ""
    assert jvm_archive.build() is None


def test_an_archive_is_used_only_whole_and_only_for_its_key(installation):
    assert jvm_archive.java_options() == ""  # none: naming a missing file would turn off the JDK's own archive too
    key = jvm_archive.archive_key()
    _place("0" * 20, 5)  # another Java's or class path's
    truncated = _place(key, 100, written=60)
    assert jvm_archive.current_archive() is None and jvm_archive.java_options() == ""
    truncated.unlink()
    whole = _place(key, 100)
    assert jvm_archive.current_archive() == whole
    assert jvm_archive.java_options() == f"-XX:SharedArchiveFile={whole} -Xlog:cds=off -Xlog:cds+dynamic=off"


def _steps(monkeypatch, fails: str | None):
    done = []

    def in_child(step, path):
        done.append(step)
        if step == "record":
            path.write_bytes(b"a" * 123)  # as a JVM dumping at exit writes it
        if step == fails:
            raise RuntimeError(f"{step} failed")

    monkeypatch.setattr(jvm_archive, "_in_child", in_child)
    return done


@pytest.mark.parametrize("fails", ["record", "verify"])
def test_a_failed_build_leaves_no_archive_and_no_partial_file(installation, monkeypatch, fails):
    _steps(monkeypatch, fails)
    with pytest.raises(RuntimeError, match=f"{fails} failed"):
        jvm_archive.build()
    assert list(jvm_archive.ARCHIVE_DIR.iterdir()) == []
    assert jvm_archive.main(["build"]) == 0  # make setup goes on, with a warning: speed only


def test_a_build_records_verifies_then_renames_and_drops_stale_archives(installation, monkeypatch):
    stale = _place("0" * 20, 7)
    done = _steps(monkeypatch, None)
    built = jvm_archive.build()
    assert done == ["record", "verify"]
    assert built == jvm_archive.current_archive() == jvm_archive.archive_path(jvm_archive.archive_key(), 123)
    assert [p.name for p in jvm_archive.ARCHIVE_DIR.iterdir()] == [built.name] and not stale.exists()
    assert jvm_archive.build() == built and done == ["record", "verify"]  # up to date: nothing rerun

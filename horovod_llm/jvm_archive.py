"""A class-data-sharing archive of the classes a local Spark session loads.

A local command's JVM spends its first seconds loading and verifying Spark's classes
from 250 jars, again in every command. Java 17 can dump the classes one run loaded
(`-XX:ArchiveClassesAtExit`) and map them into later JVMs (`-XX:SharedArchiveFile`):
the session started in 1.4-2.2 s instead of 3.2-3.4 s and its first job ran in 2.0-3.1 s
instead of 3.8-5.0 s, 5-7 CPU-seconds for both instead of 10 (2 cores of an Intel Xeon,
issue 28). `make setup` builds the archive (`python -m horovod_llm.jvm_archive build`);
`spark.session_settings` names it for local masters when it exists. Clusters' JVMs
are untouched.

The JVM only uses an archive made by the same Java build for the same class path, and
otherwise runs without it (the warning it prints is silenced: it costs time, not
correctness). So the archive's name carries a key of both, and a new PySpark or Java
finds no archive until the next `make setup`.

A truncated archive is different: the JVM maps it and dies with SIGBUS (seen here). So
an archive is written under a temporary name by a JVM that exited normally, proved by
a JVM that must map it (`-Xshare:on`), synced, and only then renamed into place; its
name also carries its size, which every use compares with the file's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

log = logging.getLogger("horovod_llm.jvm_archive")  # also when run as __main__

# In the environment whose PySpark it was made for: removed with it, and one environment's
# build never removes another's archive (each holds ~120 MB, for its own jars).
ARCHIVE_DIR = Path(sys.prefix) / "share" / "horovod-llm" / "jvm"
# The archive's own messages off: a JVM that cannot use it runs without it, as before.
QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"
RECORD_TIMEOUT_S = 600


def _spark_home() -> Path:
    from pyspark.find_spark_home import _find_spark_home  # how PySpark finds the jars it starts with

    return Path(_find_spark_home())


def java_executable() -> Path | None:
    """The `java` Spark's launcher runs: $JAVA_HOME/bin/java, else the one on PATH."""
    home = os.environ.get("JAVA_HOME")
    found = str(Path(home) / "bin" / "java") if home else shutil.which("java")
    return Path(found).resolve() if found and Path(found).exists() else None


def _stat(path: Path) -> list:
    info = path.stat()
    return [str(path), info.st_size, info.st_mtime_ns]


def archive_key() -> str | None:
    """What the archive depends on: the Java build (its binary and libjvm) and the class
    path of a local session's JVM (the configuration folder, then every jar). None without
    a `java` to run."""
    java = java_executable()
    if java is None:
        return None
    spark_home = _spark_home()
    conf_dir = os.environ.get("SPARK_CONF_DIR") or str(spark_home / "conf")
    libjvm = sorted(java.parent.parent.glob("lib/server/libjvm.so"))
    jars = sorted((spark_home / "jars").glob("*.jar"))
    facts = {"java": [_stat(p) for p in [java, *libjvm]], "conf": conf_dir, "jars": [_stat(p) for p in jars]}
    return hashlib.sha256(json.dumps(facts).encode()).hexdigest()[:20]


def archive_path(key: str, size: int) -> Path:
    return ARCHIVE_DIR / f"spark-{key}-{size}.jsa"


def current_archive() -> Path | None:
    """The finished archive for this Java and class path, or None."""
    key = archive_key()
    if key is None or not ARCHIVE_DIR.is_dir():
        return None
    for path in ARCHIVE_DIR.glob(f"spark-{key}-*.jsa"):
        size = path.stem.rsplit("-", 1)[1]
        if size.isdigit() and path.stat().st_size == int(size):
            return path
    return None


def java_options() -> str:
    """The options that map the archive into a local session's JVM, or "" when there is
    none. (Naming a missing file would turn off the JDK's own archive too.)"""
    try:
        archive = current_archive()
    except OSError:
        return ""
    return f"-XX:SharedArchiveFile={shlex.quote(str(archive))} {QUIET}" if archive else ""


# ---------------------------------------------------------------------------------------
# Building


def _session(java_opts: str):
    """A local session as the demo's configuration makes it, with `java_opts` as the
    driver's only extra options (so no existing archive is named)."""
    from horovod_llm.config import CONFIG_DIR, load_config
    from horovod_llm.spark import LOCAL_DRIVER_JAVA_OPTIONS, spark_session

    config = load_config(CONFIG_DIR / "local.yaml", ["spark.master=local[2]"])
    return spark_session(config.spark, {"spark.driver.extraJavaOptions": f"{LOCAL_DRIVER_JAVA_OPTIONS} {java_opts}"})


def _end_jvm(session) -> int:
    """Stop the session and its JVM; the JVM's exit status. PySpark leaves the gateway JVM
    running until Python exits, and it writes the archive as it exits: it exits when its
    stdin closes (PythonGatewayServer)."""
    proc = session.sparkContext._gateway.proc
    session.stop()
    proc.stdin.close()
    return proc.wait(timeout=120)


def record(target: Path) -> None:
    """Run what the product's local sessions run (preprocessing a small corpus, a task per
    rank in a barrier stage and in a plain one, as TorchDistributor and Horovod start
    theirs) in a JVM that dumps the classes it loaded into `target` as it exits."""
    from horovod_llm.config import CONFIG_DIR, load_config
    from horovod_llm.data.corpus import embedded_corpus
    from horovod_llm.data.preprocess import run_preprocess

    session = _session(f"-XX:ArchiveClassesAtExit={shlex.quote(str(target))}")
    try:
        with tempfile.TemporaryDirectory(prefix="horovod-llm-jvm-archive-") as work:
            corpus = Path(work, "corpus")
            corpus.mkdir()
            for play in embedded_corpus()[:2]:
                shutil.copy(play.url, corpus / Path(play.url).name)
            small = load_config(CONFIG_DIR / "tiny.yaml", [f"output_url={work}/run", f"data.input_url={corpus}"])
            run_preprocess(small, session)
            context = session.sparkContext
            context.parallelize(range(2), 2).barrier().mapPartitions(lambda rows: [sum(rows)]).collect()
            context.parallelize(range(2), 2).mapPartitionsWithIndex(lambda index, rows: [index]).collect()
    finally:
        # Also after a failure: a JVM still dumping after this process ended would write
        # the partial file again after build() removed it.
        status = _end_jvm(session)
    if status != 0:
        raise RuntimeError(f"the recording JVM exited with status {status}")


def verify(archive: Path) -> None:
    """Start a session whose JVM must map `archive` (-Xshare:on: no JVM starts otherwise)
    and run a job in it."""
    session = _session(f"-Xshare:on -XX:SharedArchiveFile={shlex.quote(str(archive))}")
    try:
        total = session.sparkContext.parallelize(range(4), 2).sum()
    finally:
        status = _end_jvm(session)
    if total != 6:
        raise RuntimeError(f"a job in the JVM that mapped the archive summed 0..3 to {total}")
    if status != 0:
        raise RuntimeError(f"the JVM that mapped the archive exited with status {status}")


def _in_child(step: str, path: Path) -> None:
    """`step` in a process of its own: each needs a JVM started with its own options."""
    command = [sys.executable, "-m", "horovod_llm.jvm_archive", step, str(path)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=RECORD_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"{step} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}")


def build() -> Path | None:
    """The archive for this Java and class path: the existing one, or a new one (about
    30 s on 2 cores). None without Java."""
    key = archive_key()
    if key is None:
        log.warning("no java found: no JVM class archive (local Spark starts a few seconds slower)")
        return None
    existing = current_archive()
    if existing:
        log.info("JVM class archive up to date: %s", existing)
        return existing
    ARCHIVE_DIR.mkdir(parents=True, exist_ok=True)
    partial = ARCHIVE_DIR / f".spark-{key}.{os.getpid()}.partial"
    try:
        _in_child("record", partial)
        _in_child("verify", partial)
        with open(partial, "rb") as written:
            os.fsync(written.fileno())  # its bytes on disk before its final name is
        final = archive_path(key, partial.stat().st_size)
        os.replace(partial, final)
        directory = os.open(ARCHIVE_DIR, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        partial.unlink(missing_ok=True)
    for stale in ARCHIVE_DIR.glob("spark-*.jsa"):
        if stale != final:
            stale.unlink(missing_ok=True)  # this environment's, for an earlier Java or PySpark: never used again
    log.info("JVM class archive written: %s (%.0f MB)", final, final.stat().st_size / 1e6)
    return final


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m horovod_llm.jvm_archive", description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["build", "record", "verify"])
    parser.add_argument("path", nargs="?", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.step == "record":
        record(args.path)
    elif args.step == "verify":
        verify(args.path)
    else:
        try:
            build()
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as error:
            # Speed only: local Spark works without it, a few seconds slower per command.
            log.warning("no JVM class archive (%s): local Spark starts a few seconds slower", error)
    return 0


if __name__ == "__main__":
    sys.exit(main())

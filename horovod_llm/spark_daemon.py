"""Spark's Python daemon (`pyspark.daemon`), started without the archives on its path
that hold no Python of their own.

Spark gives every Python worker a path of pyspark.zip, py4j's zip and spark-core's jar
(`PythonUtils.sparkPythonPath`), and PySpark's worker calls
`importlib.invalidate_caches()` before every task. On Python 3.11 that makes zipimport
re-read each archive's whole directory, once for every package imported from it: 75 ms
of CPU per task here (pyspark.zip's 793 entries for each of its subpackages, the jar's
5,221), about 4 of the 38 CPU-seconds that preprocessing the demo corpus took on 2 cores
(py-spy, issue 28); 0.02 ms once they are gone.

With pip's PySpark the zips lie inside site-packages/pyspark and repeat packages that
site-packages, also on the path, holds: pyspark itself, and the py4j that the driver
already imports from there. The jar holds no Python in any distribution but one that
packs PySpark into it. Those are the entries dropped; a Spark installation's own
python/lib (EMR's /usr/lib/spark) keeps its zips. The daemon's forked workers inherit
the path, and the modules it preloads (PRELOAD). `spark.session_settings` names this
module as `spark.python.daemon.module`; nothing else of PySpark's changes.
"""

from __future__ import annotations

import gc
import importlib
import sys
import zipfile
from pathlib import Path

# The modules the product's Spark tasks import (mapInPandas's Arrow and pandas, the
# preprocessing functions and their libraries), imported once by the daemon, so that
# each worker it forks starts with them. Each worker imported them itself: 0.55 s of CPU
# a worker, and 4 to 6 workers start in one preprocessing job. Frozen after import (gc.freeze), as
# Python's documentation advises before fork: PySpark's worker calls gc.collect() after
# every task, which walked all of them each time (2 of the demo's 7 worker CPU-seconds).
PRELOAD = ("pyarrow", "pandas", "pyspark.sql.pandas.serializers", "horovod_llm.data.preprocess")


def _copy_of_an_installed_pyspark(archive: Path, on_path: set[Path]) -> bool:
    """The archive lies inside a PySpark package whose folder's parent is on the path."""
    package = next((p for p in archive.parents if p.name == "pyspark" and (p / "__init__.py").is_file()), None)
    return package is not None and package.parent.resolve() in on_path


def _holds_python(archive: Path) -> bool:
    try:
        with zipfile.ZipFile(archive) as jar:
            return any(name.endswith(".py") for name in jar.namelist())
    except (OSError, zipfile.BadZipFile):
        return False  # zipimport cannot use it either


def worker_path(path: list[str]) -> list[str]:
    """`path` less the archives that only repeat an installed PySpark, and the jars
    that hold no Python."""
    on_path = {Path(entry).resolve() for entry in path if entry}
    return [entry for entry in path if not _dropped(Path(entry), on_path)]


def _dropped(archive: Path, on_path: set[Path]) -> bool:
    if archive.suffix not in (".zip", ".jar") or not archive.is_file():
        return False
    return _copy_of_an_installed_pyspark(archive, on_path) or (archive.suffix == ".jar" and not _holds_python(archive))


def preload(modules: tuple[str, ...] = PRELOAD) -> list[str]:
    """Import `modules` here, before the daemon forks; return those that failed (their
    tasks then import, and fail, as they would have)."""
    failed = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a worker reports the real error, in its task
            failed.append(name)
    return failed


def main() -> None:
    kept = worker_path(sys.path)
    for entry in set(sys.path) - set(kept):
        sys.path_importer_cache.pop(entry, None)
    sys.path[:] = kept
    from pyspark import daemon  # after the change: PySpark's modules come from the path as kept

    preload()
    gc.freeze()  # what is loaded so far: no forked worker's gc.collect() walks it again
    daemon.manager()


if __name__ == "__main__":
    main()

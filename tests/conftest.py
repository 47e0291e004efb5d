"""Shared fixtures: a tiny real corpus, a local SparkSession, a preprocessed tiny dataset.

Everything here is real: Spark in local mode on loopback, Petastorm reading Parquet,
Horovod ranks as processes. Only the sizes are small.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from horovod_llm.config import CONFIG_DIR, load_config
from horovod_llm.data.corpus import embedded_corpus

# Keep Spark, Horovod and test servers on loopback (see STACK.md).
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")


@functools.cache
def short_lived_jvm_conf_dir() -> str:
    """A SPARK_CONF_DIR for the standalone clusters' JVMs (tests/cluster): their masters,
    workers, drivers and executors live seconds to minutes, and about half of such a
    JVM's CPU goes to the optimising JIT compiler: a session running one small job took
    15 CPU-seconds, 8 with C1 alone (-XX:TieredStopAtLevel=1), on this project's 2-core
    machines. Speed only, nothing Spark or the product does changes; users' clusters keep
    the full JIT, right for long jobs. Through Spark's defaults for administrators
    (spark.*.defaultJavaOptions), which add to any options a config sets.

    Local sessions need none of it: the product gives their JVM C1 and the class archive
    of `make setup` itself (spark.session_settings), and a SPARK_CONF_DIR of its own would
    change their class path, for which that archive was not made (jvm_archive.py)."""
    if os.environ.get("SPARK_CONF_DIR"):
        return os.environ["SPARK_CONF_DIR"]
    folder = Path(tempfile.mkdtemp(prefix="horovod-llm-test-spark-conf-"))
    flags = "-XX:TieredStopAtLevel=1"
    (folder / "spark-defaults.conf").write_text(f"spark.driver.defaultJavaOptions {flags}\nspark.executor.defaultJavaOptions {flags}\n")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return str(folder)


REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = CONFIG_DIR / "tiny.yaml"
# Three short plays from the embedded corpus: about 300 KB, hundreds of paragraphs.
TINY_PLAYS = ("the-comedy-of-errors.md", "macbeth.md", "the-tempest.md")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """`make test` runs the suite on pytest-xdist workers with --dist loadgroup: each
    module stays on one worker (its module-scoped fixtures, a namespace cluster among
    them, are built once). Each cluster module's hosts live in network namespaces of
    their own (tests/cluster/netns.py), so those modules run side by side."""
    for item in items:
        module = item.nodeid.split("::")[0].split("@")[0]
        item.add_marker(pytest.mark.xdist_group(module))
    # Workers take groups in collection order (--no-loadscope-reorder): the longest first, so that no long group
    # starts last beside an idle worker (minutes each on 2 cores; the rest keep their order).
    items.sort(key=lambda item: next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST)))


LONGEST_FIRST = (
    "tests/cluster/test_host_loss_restart.py",
    "tests/test_without_horovod.py",
    "tests/cluster/test_host_loss_elastic.py",
    "tests/cluster/test_host_loss_torch.py",
    "tests/e2e/test_docs.py",
    "tests/cluster/test_multi_host.py",
    "tests/integration/test_bootstrap.py",
    "tests/reliability/test_secret_routes.py",
    "tests/e2e/test_cli.py",
    "tests/reliability/test_elastic.py",
    "tests/integration/test_serve_security.py",
    "tests/reliability/test_secrets.py",
    "tests/reliability/test_interrupted_writes.py",
    "tests/e2e/test_corpus_structure.py",
    "tests/reliability/test_rank_failure.py",
    "tests/e2e/test_launchers_agree.py",
)


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    by_name = {Path(f.url).name: f for f in embedded_corpus()}
    for name in TINY_PLAYS:
        shutil.copy(by_name[name].url, folder / name)
    return folder


def tiny_config(output_url, corpus: Path, *overrides: str):
    return load_config(TINY_CONFIG, [f"output_url={output_url}", f"data.input_url={corpus}", *overrides])


@pytest.fixture(scope="session")
def spark():
    from horovod_llm.spark import spark_session

    config = load_config(TINY_CONFIG)
    session = spark_session(config.spark)
    yield session
    session.stop()


# Set by tests/test_without_horovod.py for the suite it runs in a process without
# Horovod: the tiny dataset its own session already preprocessed (read only).
TINY_DATASET_ENV = "HOROVOD_LLM_TEST_TINY_DATASET"
HIDE_HOROVOD = REPO_ROOT / "tests" / "hide_horovod"
# The launcher's tests that run without Horovod, only through tests/test_without_horovod.py.
collect_ignore = [] if os.environ.get(TINY_DATASET_ENV) else ["without_horovod"]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_corpus, spark):
    """(config, manifest) of the tiny corpus preprocessed once for the whole session."""
    from horovod_llm.data.manifest import read_manifest
    from horovod_llm.data.preprocess import run_preprocess

    if os.environ.get(TINY_DATASET_ENV):
        config = tiny_config(os.environ[TINY_DATASET_ENV], tiny_corpus)
        return config, read_manifest(config.output_url)
    output = tmp_path_factory.mktemp("tiny-run")
    config = tiny_config(output, tiny_corpus)
    manifest = run_preprocess(config, spark)
    return config, manifest


@pytest.fixture
def fresh_run(tiny_dataset, tmp_path):
    """A new output_url holding a copy of the tiny dataset, tokenizer and embeddings, no checkpoints."""
    config, _ = tiny_dataset
    out = tmp_path / "run"
    for part in ("dataset", "tokenizer", "embeddings"):
        shutil.copytree(f"{config.output_url}/{part}", out / part)
    return str(out)


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 API (moto's server) on loopback; this process's AWS settings point at it.

    Yields the endpoint URL. Subprocesses started afterwards inherit the settings.
    """
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL")}
    settings = dict(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    os.environ.update(settings)
    # A SparkSession an earlier test module started has its JVM, and the Python workers
    # it forks, on the environment of that moment: its tasks get the settings this way.
    from pyspark import SparkContext

    if SparkContext._active_spark_context is not None:
        SparkContext._active_spark_context.environment.update(settings)
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` on loopback (SQLite backend, artifacts served by it), one per test
    module; yields (url, process). A test that stops it runs last in its module. The
    server's job runner and its seven queue consumers, which tracking never uses, stay off:
    they cost the suite's 2 cores a minute of start-up."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root}/mlflow.db", "--artifacts-destination", str(root / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, server.communicate()[1][-3000:] if server.poll() is not None else "no answer"
        time.sleep(0.5)
    yield url, server
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()

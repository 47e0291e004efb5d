"""Shared fixtures: a tiny real corpus, a local SparkSession, a preprocessed tiny dataset.

Everything here is real: Spark in local mode on loopback, Petastorm reading Parquet,
Horovod ranks as processes. Only the sizes are small.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# Keep Spark, Horovod and test servers on loopback (see STACK.md).
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

from horovod_llm.config import CONFIG_DIR, load_config  # noqa: E402
from horovod_llm.corpus import embedded_corpus  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY_CONFIG = CONFIG_DIR / "tiny.yaml"
# Three short plays from the embedded corpus: about 300 KB, hundreds of paragraphs.
TINY_PLAYS = ("the-comedy-of-errors.md", "macbeth.md", "the-tempest.md")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook, which reads the groups
def pytest_collection_modifyitems(config, items):
    """`make test` runs the suite on 2 pytest-xdist workers with --dist loadgroup: each
    module stays on one worker (its module-scoped fixtures are built once), and every
    test of tests/cluster on the same one, one after the other, since they share one
    set of network namespaces and addresses (tests/cluster/netns.py)."""
    for item in items:
        module = item.nodeid.split("::")[0].split("@")[0]
        item.add_marker(pytest.mark.xdist_group("cluster" if module.startswith("tests/cluster/") else module))
    # Workers take groups in collection order: the longest first, so that no long group
    # starts last beside an idle worker (minutes each on 2 cores; the rest keep their order).
    items.sort(key=lambda item: next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST)))


LONGEST_FIRST = (
    "tests/cluster/",
    "tests/test_without_horovod.py",
    "tests/e2e/test_cli.py",
    "tests/reliability/test_elastic.py",
    "tests/integration/test_bootstrap.py",
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
    from horovod_llm.manifest import read_manifest
    from horovod_llm.preprocess import run_preprocess

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
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=endpoint)
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value

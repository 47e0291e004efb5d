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


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory, tiny_corpus, spark):
    """(config, manifest) of the tiny corpus preprocessed once for the whole session."""
    from horovod_llm.preprocess import run_preprocess

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

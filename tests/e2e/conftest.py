import shutil

import pytest

from horovod_llm import layout


@pytest.fixture
def fresh_run(tiny_dataset, tmp_path):
    """A new output_url holding a copy of the tiny dataset, tokenizer and embeddings, no checkpoints."""
    config, manifest = tiny_dataset
    out = tmp_path / "run"
    for part in ("dataset", "tokenizer", "embeddings"):
        shutil.copytree(f"{config.output_url}/{part}", out / part)
    # the manifest names the tokenizer by its original URL; training reads it from
    # the output_url it is given, so only the files need to move
    assert (out / "dataset" / "manifest.json").exists() and layout.tokenizer_url(str(out)).endswith("tokenizer.model")
    return str(out)

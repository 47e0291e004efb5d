"""Dataset reads never unpickle (issue 25): a `_common_metadata` placed in a dataset
folder, whose schema pickle would run code (petastorm's `restricted_loads` admits all of
builtins, eval among them), is refused in one line by the loader, `evaluate --split val`
and training, and its code never runs."""

import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from horovod_llm import checkpoint, layout, storage
from horovod_llm.cli import main
from horovod_llm.config import load_config
from horovod_llm.data import dataset
from horovod_llm.data.manifest import read_manifest
from horovod_llm.errors import UserError
from horovod_llm.launchers.launch import launch_training
from horovod_llm.model import GPT, GPTConfig
from tests.e2e.test_train import with_output

UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"


def plant_pickle(split_folder, marker) -> None:
    """A `_common_metadata` as petastorm's materialize_dataset writes it, but whose
    pickled 'schema' is builtins.eval of code that creates `marker`."""
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    payload = b"cbuiltins\neval\n(S" + repr(code).encode() + b"\ntR."
    schema = pa.schema([pa.field("ids", pa.list_(pa.int32()))]).with_metadata({UNISCHEMA_KEY: payload})
    pq.write_metadata(schema, split_folder / "_common_metadata")


def test_petastorm_would_run_that_code(tmp_path):
    # What the refusal guards against: petastorm's own loader runs the payload.
    from petastorm.etl.legacy import restricted_loads

    assert restricted_loads(b"cbuiltins\neval\n(S'6*7'\ntR.") == 42


@pytest.fixture
def planted(fresh_run, tmp_path):
    marker = tmp_path / "code-ran"
    plant_pickle(Path(layout.split_url(fresh_run, "val")), marker)
    return fresh_run, marker


def test_the_loader_refuses_a_file_it_did_not_write(planted):
    out, marker = planted
    refused = pytest.raises(UserError, match=r"^\S+/dataset/val/_common_metadata was not written by horovod-llm .* a pickled schema holds: remove it")
    with refused, dataset.window_batches(out, "val", 0, 1, 2, num_epochs=1, seed=0, shuffle=False) as batches:
        list(batches)
    assert not marker.exists()


def test_evaluate_refuses_it_in_one_line(planted, capsys):
    out, marker = planted
    # a checkpoint of this run's tokenizer, so that evaluation gets as far as reading
    manifest = read_manifest(out)
    tokenizer_bytes = storage.read_bytes(layout.tokenizer_url(out))
    model = GPT(GPTConfig(vocab_size=manifest.tokenizer.vocab_size, block_size=manifest.window_size, n_layer=1, n_head=2, n_embd=16))
    url = checkpoint.save_checkpoint(out, 1, model, None, load_config(None), tokenizer_bytes, {"metrics": {}})
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", url, "--split", "val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and "_common_metadata was not written by horovod-llm" in err[-1]
    assert not marker.exists()


def test_training_refuses_it_before_any_rank_starts(planted, tiny_dataset):
    config, _ = tiny_dataset
    out, marker = planted
    with pytest.raises(UserError, match="_common_metadata was not written by horovod-llm"):
        launch_training(with_output(config, out, launcher="local", num_proc=1, max_steps=2))
    assert not marker.exists()


def test_even_unchecked_petastorm_unpickles_nothing(planted):
    # Belt and braces: past the file check, petastorm's schema loader refuses pickles.
    from petastorm.etl import dataset_metadata

    out, marker = planted
    dataset._never_unpickle_schemas()
    with pytest.raises(dataset_metadata.PetastormMetadataError, match="reads no pickled schema"):
        dataset_metadata.get_schema_from_dataset_url("file://" + layout.split_url(out, "val"))
    assert not marker.exists()


def test_hidden_files_of_an_interrupted_write_are_left_alone(fresh_run):
    split = Path(layout.split_url(fresh_run, "train"))
    shutil.copy(next(split.glob("part-*.parquet")), split / ".tmp-abandoned")
    dataset.check_only_our_files(fresh_run, "train")  # no error: readers skip hidden files

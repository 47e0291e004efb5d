"""The part writer shared by the Spark task and the single-process benchmark baseline,
and what a Spark Python worker imports."""

import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from horovod_llm.data import tokenizer
from horovod_llm.data.preprocess import encoding_partitions, row_groups_per_part, write_windows_part
from horovod_llm.data.windows import join_documents, sliding_windows
from tests.unit.test_tokenizer import TEXT


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "sample.txt"
    path.write_text("\n".join(tokenizer.to_model_text(block) for block in (TEXT * 20).split("\n\n")) + "\n")
    return tokenizer.load(tokenizer.train_bpe(path, vocab_size=120, character_coverage=1.0, seed=1))


def expected_windows(processor, texts, window_size, overlap):
    ids = [np.asarray(doc, dtype=np.int32) for doc in tokenizer.encode(processor, texts)]
    return sliding_windows(join_documents(ids, tokenizer.EOS_ID), window_size, overlap)


@pytest.mark.parametrize("split", ["train", "val"])
def test_part_holds_the_windows_of_its_documents_joined_with_eos(processor, tmp_path, split):
    texts = [TEXT, TEXT.upper(), TEXT[:40]]
    url = str(tmp_path / "part-00000.parquet")
    counts = write_windows_part(processor, iter(texts), url, split, window_size=8, overlap=3, row_groups_per_part=4, shuffle_seed=7)
    expected = expected_windows(processor, texts, 8, 3)
    table = pq.read_table(url)
    written = np.array(table.column("ids").to_pylist(), dtype=np.int32)
    assert counts["documents"] == 3 and counts["windows"] == len(expected) == len(written)
    assert pq.ParquetFile(url).num_row_groups == counts["row_groups"] == 4
    if split == "val":
        assert np.array_equal(written, expected)  # validation keeps the text's order
    else:
        assert not np.array_equal(written, expected)  # shuffled within the part...
        assert sorted(map(tuple, written)) == sorted(map(tuple, expected))  # ...the same windows


def test_part_without_a_full_window_writes_nothing(processor, tmp_path):
    url = tmp_path / "part-00000.parquet"
    counts = write_windows_part(processor, ["KING:"], str(url), "train", window_size=64, overlap=0, row_groups_per_part=1, shuffle_seed=0)
    assert counts["windows"] == 0 and counts["row_groups"] == 0 and not url.exists()


def test_encoding_partitions_and_row_groups():
    assert encoding_partitions(0, 2, 10_000_000, 100) == 8  # at least 4 per core
    assert encoding_partitions(0, 2, 1_000_000_000, 100) == 30  # about 32 MB each
    assert encoding_partitions(0, 2, 10_000_000, 3) == 3  # never more than the documents
    assert encoding_partitions(5, 2, 10_000_000, 100) == 5  # as configured
    assert row_groups_per_part(8, 3) == 3 and row_groups_per_part(8, 8) == 1 and row_groups_per_part(8, 20) == 1


def test_spark_workers_do_not_import_torch():
    """Every Spark Python worker imports horovod_llm.data.preprocess to run its tasks: torch
    would cost each of them seconds of CPU for nothing (seen in bench/end_to_end.py)."""
    code = "import sys, horovod_llm.data.preprocess; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

"""Issue 3's guarantees on purpose-built corpora: split hygiene, odd inputs, reuse."""

import gzip
import re

import numpy as np
import pyarrow.parquet as pq
import pytest

from horovod_llm import layout, storage
from horovod_llm.data import corpus, dataset, tokenizer
from horovod_llm.data.preprocess import run_preprocess
from tests.conftest import tiny_config

pytestmark = pytest.mark.spark

WORDS = ["the", "king", "and", "queen", "of", "a", "far", "land", "spoke", "with", "their", "people", "about", "the", "harvest", "and", "rain"]


def marker_corpus(folder, num_docs=40, sentences=60):
    """Documents whose every sentence carries the document's own marker word `zqNNx`."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(num_docs):
        lines = [" ".join(rng.choice(WORDS, 8)) + f" zq{i}x." for _ in range(sentences)]
        (folder / f"doc{i:02d}.txt").write_text("\n".join(lines) + "\n")
    return folder


def split_markers(out, split):
    processor = tokenizer.load(storage.read_bytes(layout.tokenizer_url(out)))
    found = set()
    with dataset.window_batches(out, split, 0, 1, 64, num_epochs=1, seed=0, shuffle=False) as batches:
        for batch in batches:
            for row in batch:
                found |= {int(m) for m in re.findall(r"zq(\d+)x", tokenizer.decode(processor, row.tolist()))}
    return found


def test_no_window_of_a_validation_document_appears_in_train(tmp_path, spark):
    folder = marker_corpus(tmp_path / "corpus")
    config = tiny_config(tmp_path / "out", folder, "data.split_on_blank_lines=false", "data.val_fraction=0.25", "tokenizer.vocab_size=120")
    run_preprocess(config, spark)
    val_docs = {i for i in range(40) if corpus.split_of(f"doc{i:02d}.txt", 0.25) == "val"}
    assert 0 < len(val_docs) < 40
    train_seen, val_seen = split_markers(config.output_url, "train"), split_markers(config.output_url, "val")
    assert val_seen and val_seen <= val_docs
    assert train_seen and not train_seen & val_docs


def test_binary_files_are_skipped_and_reported_gz_is_read(tmp_path, spark):
    folder = marker_corpus(tmp_path / "corpus")
    (folder / "photo.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 10)
    (folder / "extra.txt.gz").write_bytes(gzip.compress(("more words for the corpus zq99x.\n" * 50).encode()))
    config = tiny_config(tmp_path / "out", folder, "data.split_on_blank_lines=false", "data.val_fraction=0.25", "tokenizer.vocab_size=120")
    manifest = run_preprocess(config, spark)
    assert manifest.corpus.binary_files_skipped == 1 and manifest.corpus.binary_files == ["photo.txt"]
    assert manifest.splits["train"].documents + manifest.splits["val"].documents == 41  # 40 + the .gz


def test_an_existing_tokenizer_is_reused(tiny_dataset, tmp_path, tiny_corpus, spark):
    config, manifest = tiny_dataset
    reuse = tiny_config(tmp_path / "out", tiny_corpus, f"tokenizer.model_url={layout.tokenizer_url(config.output_url)}")
    reused = run_preprocess(reuse, spark)
    assert reused.tokenizer.sha256 == manifest.tokenizer.sha256
    assert reused.tokenizer.reused_from == layout.tokenizer_url(config.output_url)
    assert reused.splits["train"].windows == manifest.splits["train"].windows


def test_word2vec_matrix_is_aligned_and_reported(tiny_dataset):
    config, manifest = tiny_dataset
    info = manifest.embeddings
    from horovod_llm.data.embeddings import load_matrix

    matrix = load_matrix(layout.embeddings_url(config.output_url))
    assert matrix.shape == (manifest.tokenizer.vocab_size, config.model.n_embd)
    assert 0.5 < info.coverage <= 1.0 and info.sample_tokens > 1000
    assert np.isfinite(matrix).all()


def test_a_single_100_mb_line(tmp_path, spark):
    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(1)
    words = np.array(WORDS + ["zq1x", "zq2x", "gold", "silver"])
    line = " ".join(rng.choice(words, 19_000_000))  # about 100 MB, no newline at all
    (folder / "one-line.txt").write_text(line)
    (folder / "other.txt").write_text("a small second document to split on.\n" * 200)
    del line
    config = tiny_config(
        tmp_path / "out", folder, "data.split_on_blank_lines=false", "data.val_fraction=0.5", "embedding.word2vec.enabled=false", "tokenizer.vocab_size=120"
    )
    manifest = run_preprocess(config, spark)
    biggest = max(manifest.splits.values(), key=lambda s: s.tokens)
    assert biggest.tokens > 15_000_000 and biggest.windows > 900_000
    first = storage.join(layout.split_url(config.output_url, "train"), manifest.splits["train"].files[0])
    assert pq.ParquetFile(first).metadata.num_rows > 0


def test_the_seed_projects_window_15_overlap_7(tmp_path, spark):
    folder = marker_corpus(tmp_path / "corpus", num_docs=20, sentences=20)
    config = tiny_config(
        tmp_path / "out",
        folder,
        "data.split_on_blank_lines=false",
        "data.val_fraction=0.25",
        "tokenizer.vocab_size=120",
        "data.window_size=15",
        "data.overlap=7",
    )
    manifest = run_preprocess(config, spark)
    with dataset.window_batches(config.output_url, "val", 0, 1, 8, num_epochs=1, seed=0, shuffle=False) as batches:
        first = next(iter(batches))
    assert first.shape == (8, 16)
    assert (first[1, :8] == first[0, 8:]).all()  # stride 8: 7 ids of overlap plus the shared target
    assert manifest.splits["train"].windows > 0

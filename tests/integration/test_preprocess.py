"""The Spark job on a tiny real corpus, read back through Petastorm."""

import calendar
import json
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from horovod_llm import layout, storage
from horovod_llm.data import dataset, tokenizer
from horovod_llm.data.manifest import read_manifest
from horovod_llm.data.preprocess import run_preprocess
from horovod_llm.errors import UserError
from tests.conftest import tiny_config

pytestmark = pytest.mark.spark


def read_all(output_url, split, rank, world_size):
    with dataset.window_batches(output_url, split, rank, world_size, batch_size=7, num_epochs=1, seed=0, shuffle=False) as batches:
        return [b for b in batches]


def test_windows_read_back_through_petastorm_match_the_manifest(tiny_dataset):
    config, manifest = tiny_dataset
    out = config.output_url
    assert manifest.to_dict() == json.loads(storage.read_bytes(layout.manifest_url(out)))
    assert read_manifest(out) == manifest
    span = config.data.window_size + 1
    vocab = manifest.tokenizer.vocab_size
    for split in layout.SPLITS:
        expected = manifest.splits[split]
        assert expected.windows > 0 and expected.documents > 0
        # two shards, as two ranks read them: together exactly the split, no row twice
        shards = [np.concatenate(read_all(out, split, rank, 2)) for rank in range(2)]
        rows = np.concatenate(shards)
        assert rows.shape == (expected.windows, span)
        assert rows.min() >= 0 and rows.max() < vocab
        assert len({r.tobytes() for r in rows}) == len(rows)
        assert sum(pq.ParquetFile(storage.join(layout.split_url(out, split), f)).num_row_groups for f in expected.files) == expected.row_groups
        assert expected.row_groups >= config.data.max_ranks


def test_every_pass_over_a_shard_reads_all_of_it(tiny_dataset):
    # petastorm 0.13.1's thread pool could end a pass one row group early (a race with
    # its ventilator thread): about one read in five here, before dataset's fix.
    config, manifest = tiny_dataset
    expected = manifest.splits["train"].windows
    for _ in range(15):
        assert sum(len(batch) for rank in range(2) for batch in read_all(config.output_url, "train", rank, 2)) == expected


def test_windows_are_consecutive_text_with_the_configured_overlap(tiny_dataset):
    config, manifest = tiny_dataset
    processor = tokenizer.load(storage.read_bytes(layout.tokenizer_url(config.output_url)))
    first_file = storage.join(layout.split_url(config.output_url, "val"), manifest.splits["val"].files[0])
    rows = np.array(pq.read_table(first_file).column("ids").to_pylist())
    stride = config.data.window_size - config.data.overlap
    # val parts are not shuffled: window i+1 starts `stride` ids after window i
    assert (rows[1:, : config.data.overlap + 1] == rows[:-1, stride:]).all()
    text = tokenizer.decode(processor, rows[0].tolist())
    assert len(text) > 20 and "\n" in text


def test_manifest_counts_and_tokenizer_hash(tiny_dataset):
    config, manifest = tiny_dataset
    model_bytes = storage.read_bytes(layout.tokenizer_url(config.output_url))
    assert manifest.tokenizer.sha256 == tokenizer.fingerprint(model_bytes)
    assert manifest.tokenizer.special_ids == {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    assert manifest.config["data"]["window_size"] == config.data.window_size
    for split in layout.SPLITS:
        s = manifest.splits[split]
        # tokens include one EOS per document; windows follow from the stride per partition
        assert s.tokens > s.windows * (config.data.window_size - config.data.overlap)
        assert s.partitions["windows_min"] <= s.partitions["windows_median"] <= s.partitions["windows_max"]
    assert set(manifest.stages) >= {"read", "tokenizer", "windows", "word2vec"}
    # Spark's own counters, read through py4j, for a real job (issue 12: they used to
    # fall back to zeros silently)
    for name in ("read", "windows"):
        stage = manifest.stages[name]
        assert stage["spark_stages"] >= 1 and stage["tasks"] >= 1 and stage["executor_run_seconds"] > 0, (name, stage)
    windows = manifest.stages["windows"]
    assert windows["shuffle_write_bytes"] > 0  # repartitionByRange shuffles the documents
    # Both splits' windows written by the tasks of one Spark stage (issue 28): a job per
    # split left a core idle while the smaller split's few tasks ran.
    assert windows["write_stages"] == 1, windows


def test_rerun_with_same_config_skips_and_force_rebuilds(tiny_dataset, spark):
    config, manifest = tiny_dataset
    manifest_path = layout.manifest_url(config.output_url)
    before = storage.read_bytes(manifest_path)
    assert run_preprocess(config, spark) == manifest
    assert storage.read_bytes(manifest_path) == before  # untouched
    forced_at = time.time()
    rebuilt = run_preprocess(config, spark, force=True)
    for split in layout.SPLITS:  # deterministic: the same counts and files (timings differ)
        for key in ("documents", "tokens", "windows", "row_groups", "files"):
            assert getattr(rebuilt.splits[split], key) == getattr(manifest.splits[split], key)
    # rebuilt: every part and the manifest written again, after --force was given
    parts = [p for split in layout.SPLITS for p in Path(layout.split_url(config.output_url, split)).glob("*.parquet")]
    assert parts and all(p.stat().st_mtime >= forced_at for p in [*parts, Path(manifest_path)])
    assert calendar.timegm(time.strptime(rebuilt.created_at, "%Y-%m-%dT%H:%M:%SZ")) >= int(forced_at)


def test_an_edited_corpus_of_the_same_size_is_rebuilt(tmp_path, tiny_corpus, spark):
    # issue 12: the fingerprint held file names and sizes only, so this reused a stale dataset
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    play = corpus / "macbeth.md"
    play.write_bytes((tiny_corpus / "macbeth.md").read_bytes())
    config = tiny_config(tmp_path / "out", corpus, "embedding.word2vec.enabled=false", "model.init_from_word2vec=false")
    first = run_preprocess(config, spark)
    text = play.read_bytes()
    edited = text.replace(b"Macbeth", b"Hamlet!", 1)
    assert len(edited) == len(text) and edited != text
    play.write_bytes(edited)
    edited_at = time.time()
    second = run_preprocess(config, spark)
    assert second.fingerprint != first.fingerprint
    assert Path(layout.manifest_url(config.output_url)).stat().st_mtime >= edited_at  # rebuilt, not reused
    index = storage.read_json(layout.corpus_index_url(config.output_url))
    assert index["macbeth.md"]["size"] == len(text) and index["macbeth.md"]["digest"].startswith("sha256:")
    assert run_preprocess(config, spark) == second  # unchanged: reused


def test_training_refuses_a_dataset_without_manifest(tmp_path):
    (tmp_path / "dataset" / "train").mkdir(parents=True)
    with pytest.raises(UserError, match="run 'horovod-llm preprocess'"):
        read_manifest(str(tmp_path))


def test_corpus_too_small_for_a_window(tmp_path, spark):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"doc{i}.txt").write_text(f"short text number {i} with a few words in it.\n")
    config = tiny_config(tmp_path / "out", corpus, "data.split_on_blank_lines=false", "tokenizer.vocab_size=60", "data.window_size=512", "data.overlap=0")
    with pytest.raises(UserError, match="too small for one"):
        run_preprocess(config, spark)
    assert not storage.exists(layout.manifest_url(config.output_url))


def test_empty_corpus(tmp_path, spark):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "empty.txt").write_text("   \n\n")
    with pytest.raises(UserError, match="holds no text"):
        run_preprocess(tiny_config(tmp_path / "out", corpus), spark)


def test_another_corpus_is_refused_beside_checkpoints_of_the_old_one(fresh_run, tiny_corpus, spark, tmp_path):
    """A user's corpus pointed at an output_url that holds another dataset's checkpoints
    (the demo's, say) must not train from them: refused before anything is removed."""
    out = fresh_run
    trained_on = read_manifest(out).fingerprint
    step = layout.checkpoints_url(out) + "/step-00000004"
    storage.write_json(storage.join(step, "meta.json"), {"step": 4, "dataset": trained_on})
    storage.write_bytes(storage.join(step, "COMPLETE"), b"")
    # the same corpus and settings: the dataset is reused, the checkpoints fit it
    assert run_preprocess(tiny_config(out, tiny_corpus), spark).fingerprint == trained_on

    other = tmp_path / "mine.txt"
    other.write_text("A corpus of my own.\n\nNothing of the plays in it.\n" * 200, encoding="utf-8")
    kept = {p.relative_to(out): p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=r"holds checkpoints trained on another dataset .*pass a new output_url"):
        run_preprocess(tiny_config(out, other), spark)
    assert {p.relative_to(out): p.stat().st_mtime_ns for p in Path(out).rglob("*") if p.is_file()} == kept  # nothing touched


def test_the_reader_threads_sleep_while_their_batches_wait(tiny_dataset):
    """Training reads far faster than it trains, so the reader's queue is full nearly all
    the time: its threads must then sleep, not wake to look at the stop flag a thousand
    times a second (petastorm's reader thread, which took 2% of a core from the ranks'
    compute) or a hundred (its ventilator), each time taking the GIL from the training
    thread on a bound rank's core."""
    import threading

    from petastorm.workers_pool.thread_pool import WorkerThread

    def wakeups(thread: threading.Thread) -> int:
        status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
        return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))

    def ventilates(thread: threading.Thread) -> bool:
        return getattr(getattr(thread, "_target", None), "__name__", "") == "_ventilate"

    config, _ = tiny_dataset
    with dataset.window_batches(config.output_url, "train", 0, 1, batch_size=2, num_epochs=None, seed=0, shuffle=True) as batches:
        next(batches)
        workers = [t for t in threading.enumerate() if isinstance(t, WorkerThread)]
        ventilators = [t for t in threading.enumerate() if ventilates(t)]
        assert len(workers) == 1 and len(ventilators) == 1
        time.sleep(1.0)  # the queue fills
        before = [wakeups(t) for t in (*workers, *ventilators)]
        time.sleep(1.0)
        woken = [wakeups(t) - b for t, b in zip((*workers, *ventilators), before, strict=True)]
    assert woken[0] < 50, f"the reader thread woke {woken[0]} times in 1 s with its queue full"
    assert woken[1] < 50, f"the ventilator thread woke {woken[1]} times in 1 s with the reader's queue full"

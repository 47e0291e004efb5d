"""What the driver and every rank decide alike (job.py), resumption's data position
(resume.py) and the manifest's promises (manifest.py): pure, no Horovod."""

import dataclasses
import os

import pytest

from horovod_llm.config import load_config
from horovod_llm.data.manifest import FORMAT_VERSION, Manifest
from horovod_llm.errors import UserError
from horovod_llm.training.comm import set_horovod_environment
from horovod_llm.training.job import check_job, gpt_config, learning_rates, steps_per_epoch, threads_for_rank, total_steps
from horovod_llm.training.resume import DataPosition, Resumed, data_position


def manifest_values(**changes) -> dict:
    split = {"documents": 3, "tokens": 900, "windows": 40, "row_groups": 2, "files": ["part-00000.parquet"], "partitions": {}}
    values = {
        "format_version": FORMAT_VERSION,
        "fingerprint": "f" * 64,
        "created_at": "2026-11-30T10:00:00Z",
        "window_size": 32,
        "overlap": 16,
        "column": "ids",
        "tail_policy": "drop",
        "tokenizer": {"url": "t", "sha256": "s", "vocab_size": 300, "special_ids": {"pad": 0}, "sample_bytes": 10, "reused_from": None},
        "embeddings": {"url": "e", "vector_size": 32, "coverage": 0.9, "sample_tokens": 100},
        "corpus": {"input_url": "c", "files": 1, "bytes": 5, "replaced_sequences": 0, "binary_files_skipped": 0, "binary_files": []},
        "splits": {"train": dict(split), "val": dict(split)},
        "stages": {},
        "wall_seconds": 1.0,
        "config": {},
    }
    return {**values, **changes}


def test_steps_follow_the_global_row_count():
    assert steps_per_epoch(num_windows=1000, windows_per_step=2 * 16) == 31
    assert steps_per_epoch(num_windows=5, windows_per_step=32) == 1  # never 0: a tiny dataset still trains
    train = load_config(None, ["train.epochs=3"]).train
    assert total_steps(train, 31) == 93
    assert total_steps(dataclasses.replace(train, max_steps=7), 31) == 7  # max_steps wins


def test_learning_rates_scale_with_ranks_only_when_asked():
    train = load_config(None, ["train.learning_rate=0.001", "train.min_lr=0.0001"]).train
    assert learning_rates(train, 4) == (0.001, 0.0001)
    assert learning_rates(dataclasses.replace(train, scale_lr_by_ranks=True), 4) == pytest.approx((0.004, 0.0004))


def test_threads_share_the_host_unless_configured():
    assert threads_for_rank(3, 2) == 3
    assert threads_for_rank(0, 1) == os.cpu_count()
    assert threads_for_rank(0, 64) == 1  # never 0


def test_the_job_checks_refuse_what_no_rank_could_train():
    manifest = Manifest.from_dict(manifest_values(embeddings=None))
    config = load_config(None)
    with pytest.raises(UserError, match="no Word2Vec vectors"):
        check_job(config, manifest, mpi_built=False)
    config = load_config(None, ["model.init_from_word2vec=false", "train.allreduce_op=adasum"])
    with pytest.raises(UserError, match="adasum needs Horovod built with MPI"):
        check_job(config, manifest, mpi_built=False)
    check_job(config, manifest, mpi_built=True)


def test_the_model_shape_comes_from_the_config_and_the_dataset():
    config = load_config(None, ["model.n_layer=3", "model.init_std=0.01"])
    shape = gpt_config(config, vocab_size=300, block_size=32)
    assert (shape.vocab_size, shape.block_size, shape.n_layer, shape.init_std) == (300, 32, 3, 0.01)


def test_a_resume_replays_the_same_order_only_at_the_same_world_size():
    assert data_position(Resumed(), seed=7, world_size=2) == DataPosition(7, 0, 2)
    checkpointed = Resumed(step=30, data={"seed": 7, "world_size": 2, "batches_consumed": 30})
    assert data_position(checkpointed, seed=7, world_size=2) == DataPosition(7, 30, 2)
    assert data_position(checkpointed, seed=7, world_size=1) == DataPosition(37, 0, 1)  # other shards: a fresh order
    assert data_position(Resumed(step=30), seed=7, world_size=2) == DataPosition(37, 0, 2)  # no data position recorded


def test_the_manifest_round_trips_and_refuses_broken_promises():
    manifest = Manifest.from_dict(manifest_values())
    assert Manifest.from_dict(manifest.to_dict()) == manifest and manifest.stride == 16
    for changes, fragment in [
        ({"format_version": 0}, "format_version 0"),
        ({"overlap": 32}, "overlap 32"),
        ({"splits": {"train": manifest_values()["splits"]["train"]}}, "split val is missing"),
        ({"tokenizer": {"url": "t"}}, "sha256"),
    ]:
        with pytest.raises(ValueError, match=fragment):
            Manifest.from_dict(manifest_values(**changes))
    values = manifest_values()
    del values["window_size"]
    with pytest.raises(ValueError, match="window_size"):
        Manifest.from_dict(values)


def test_each_split_keeps_the_overlap_it_was_cut_with():
    # splits without their own overlap: a manifest written before validation's was capped
    older = Manifest.from_dict(manifest_values())
    assert older.overlap_of("train") == older.overlap_of("val") == 16
    split = manifest_values()["splits"]["train"]
    manifest = Manifest.from_dict(manifest_values(overlap=28, splits={"train": {**split, "overlap": 28}, "val": {**split, "overlap": 16}}))
    assert (manifest.overlap_of("train"), manifest.overlap_of("val"), manifest.stride) == (28, 16, 4)
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    with pytest.raises(ValueError, match="split val's overlap 32 must be in"):
        Manifest.from_dict(manifest_values(splits={"train": split, "val": {**split, "overlap": 32}}))


def test_horovod_cycle_time_follows_the_config_unless_the_user_set_it(monkeypatch):
    monkeypatch.delenv("HOROVOD_CYCLE_TIME", raising=False)
    monkeypatch.delenv("HOROVOD_LLM_CYCLE_TIME_FROM_CONFIG", raising=False)
    set_horovod_environment(load_config(None, ["train.horovod_cycle_time_ms=10"]).train)
    assert os.environ["HOROVOD_CYCLE_TIME"] == "10.0"
    # a later run in the same process (or a rank that inherited this environment) follows its own config
    set_horovod_environment(load_config(None, ["train.horovod_cycle_time_ms=5"]).train)
    assert os.environ["HOROVOD_CYCLE_TIME"] == "5.0"
    monkeypatch.setenv("HOROVOD_CYCLE_TIME", "2")  # the user's own setting wins
    set_horovod_environment(load_config(None, ["train.horovod_cycle_time_ms=10"]).train)
    assert os.environ["HOROVOD_CYCLE_TIME"] == "2"


def test_the_report_says_when_validation_was_a_sample_of_the_split():
    from horovod_llm.pipeline import validation_coverage

    assert validation_coverage(120, 120) == "on all 120 validation windows"
    assert validation_coverage(None, 7) == "on all 7 validation windows"  # a summary from before val_windows
    sample = validation_coverage(1_600, 25_000)
    assert sample.startswith("on 1,600 of 25,000 validation windows") and "evaluate --split val" in sample

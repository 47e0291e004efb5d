"""A tiny real checkpoint for the generation, evaluation and server tests, without Spark.

A sentencepiece BPE tokenizer trained on two short passages, and a 2-layer model
trained on them (joined with EOS, as the dataset joins documents) until it recites
them: greedy generation then gives known text and ends at EOS, so tests can assert on
real outputs. Both are built once per process (about a second, on one thread) and cached.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import torch

from horovod_llm import checkpoint
from horovod_llm.config import load_config
from horovod_llm.data import tokenizer
from horovod_llm.model import GPT, GPTConfig

DOCUMENTS = (
    "KING:\nNow is the winter of our discontent\nMade glorious summer by this sun of York;\n",
    "QUEEN:\nAnd all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n",
)
BLOCK_SIZE = 16


@functools.cache
def tiny_tokenizer() -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sample.txt"
        lines = [tokenizer.to_model_text(doc) for doc in DOCUMENTS] * 20
        path.write_text("\n".join(lines) + "\n")
        return tokenizer.train_bpe(path, vocab_size=120, character_coverage=1.0, seed=1)


@functools.cache
def _trained_state(positional: str, steps: int) -> dict:
    processor = tokenizer.load(tiny_tokenizer())
    stream = []
    for ids in tokenizer.encode(processor, list(DOCUMENTS)):
        stream += [tokenizer.EOS_ID] + ids
    stream = torch.tensor(stream * 4, dtype=torch.long)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float sums on every machine, and faster at this size
    torch.manual_seed(0)
    model = GPT(tiny_config(positional))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        starts = torch.randint(0, len(stream) - BLOCK_SIZE - 1, (16,), generator=generator)
        batch = torch.stack([stream[s : s + BLOCK_SIZE + 1] for s in starts.tolist()])
        _, loss = model(batch[:, :-1], batch[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.set_num_threads(threads)
    return {k: v.clone() for k, v in model.state_dict().items()}


def encode(text: str) -> list[int]:
    return tokenizer.encode(tokenizer.load(tiny_tokenizer()), [text])[0]


def tiny_config(positional: str = "sinusoidal") -> GPTConfig:
    return GPTConfig(vocab_size=120, block_size=BLOCK_SIZE, n_layer=2, n_head=2, n_embd=32, positional=positional, pad_id=tokenizer.PAD_ID)


def tiny_model(positional: str = "sinusoidal", steps: int = 200) -> GPT:
    """A fresh copy of the trained tiny model (tests may change theirs)."""
    model = GPT(tiny_config(positional))
    model.load_state_dict(_trained_state(positional, steps))
    return model.eval()


def save_tiny_checkpoint(output_url: str, step: int = 1, positional: str = "sinusoidal") -> str:
    """Write the tiny model as checkpoints/step-XXXXXXXX under output_url; return its URL."""
    return checkpoint.save_checkpoint(output_url, step, tiny_model(positional), None, load_config(None), tiny_tokenizer(), {"metrics": {}})

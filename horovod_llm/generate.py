"""Text generation from a trained checkpoint."""

from __future__ import annotations

import torch

from horovod_llm import tokenizer
from horovod_llm.checkpoint import LoadedCheckpoint


def generate_text(
    loaded: LoadedCheckpoint,
    prompt: str,
    *,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    seed: int,
) -> str:
    """The prompt followed by up to `max_new_tokens` sampled tokens (stops at EOS)."""
    processor = tokenizer.load(loaded.tokenizer_bytes)
    ids = [tokenizer.BOS_ID] + tokenizer.encode(processor, [prompt])[0]
    generator = torch.Generator().manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long)
    out = loaded.model.generate(idx, max_new_tokens, temperature=temperature, top_k=top_k, generator=generator, stop_id=tokenizer.EOS_ID)
    new_ids = [i for i in out[0, len(ids) :].tolist() if i != tokenizer.EOS_ID]
    # Decode prompt and continuation together so word-boundary spaces come out right,
    # then keep the prompt exactly as the user wrote it.
    full = tokenizer.decode(processor, ids[1:] + new_ids)
    prompt_decoded = tokenizer.decode(processor, ids[1:])
    return prompt + full[len(prompt_decoded) :]

"""Text generation from a trained checkpoint: prompt in, completions out.

The prompt is encoded after BOS (so an empty prompt starts from BOS alone); a prompt
longer than the model's context keeps its last `block_size` ids (the model's
`generate_tokens` crops it). A completion ends at EOS, at the first `stop` string
(which is not included), or after `max_new_tokens` ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from horovod_llm import tokenizer
from horovod_llm.checkpoint import LoadedCheckpoint
from horovod_llm.model import GPT
from horovod_llm.sampling import Sampling


@dataclass
class Completion:
    text: str  # the continuation only, without the prompt
    prompt_tokens: int  # ids of the prompt text (before cropping, without BOS)
    completion_tokens: int  # ids generated, including a final EOS or the ids of a stop string
    stop_reason: str  # "eos", "stop" or "length"


class TextGenerator:
    """A model and its tokenizer, ready to complete prompts."""

    def __init__(self, model: GPT, tokenizer_bytes: bytes, use_cache: bool = True):
        self.model = model.eval()
        self.processor = tokenizer.load(tokenizer_bytes)
        self.use_cache = use_cache

    @classmethod
    def from_checkpoint(cls, loaded: LoadedCheckpoint, use_cache: bool = True) -> TextGenerator:
        return cls(loaded.model, loaded.tokenizer_bytes, use_cache)

    def encode(self, prompt: str) -> list[int]:
        return tokenizer.encode(self.processor, [prompt])[0] if prompt else []

    def continuation(self, prompt_ids: list[int], new_ids: list[int]) -> str:
        """The text new_ids add after the prompt. Decoded with the prompt's last id, so the
        space that starts a word comes out right; EOS decodes to nothing."""
        tail = prompt_ids[-1:]
        return tokenizer.decode(self.processor, tail + new_ids)[len(tokenizer.decode(self.processor, tail)) :]

    def complete(self, prompt: str, sampling: Sampling, num_samples: int = 1) -> list[Completion]:
        """`num_samples` completions of the prompt, drawn together as one batch. The same
        seed, settings and number of samples give the same texts."""
        prompt_ids = self.encode(prompt)
        idx = torch.tensor([[tokenizer.BOS_ID] + prompt_ids] * num_samples, dtype=torch.long)
        generator = torch.Generator().manual_seed(sampling.seed)
        steps = self.model.generate_tokens(
            idx, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, generator=generator, use_cache=self.use_cache
        )
        new_ids: list[list[int]] = [[] for _ in range(num_samples)]
        results: list[Completion | None] = [None] * num_samples
        for step, next_ids in enumerate(steps):
            for row, next_id in enumerate(next_ids[:, 0].tolist()):
                if results[row] is not None:
                    continue  # finished: the batch goes on for the other rows
                new_ids[row].append(next_id)
                if next_id == tokenizer.EOS_ID:
                    results[row] = Completion(self.continuation(prompt_ids, new_ids[row][:-1]), len(prompt_ids), len(new_ids[row]), "eos")
                elif sampling.stop:
                    text = self.continuation(prompt_ids, new_ids[row])
                    cut = min((i for i in (text.find(s) for s in sampling.stop) if i >= 0), default=-1)
                    if cut >= 0:
                        results[row] = Completion(text[:cut], len(prompt_ids), len(new_ids[row]), "stop")
            if all(r is not None for r in results) or step + 1 >= sampling.max_new_tokens:
                break
        return [r or Completion(self.continuation(prompt_ids, ids), len(prompt_ids), len(ids), "length") for r, ids in zip(results, new_ids, strict=True)]


def generate_text(loaded: LoadedCheckpoint, prompt: str, sampling: Sampling) -> str:
    """The prompt followed by one sampled completion (the pipeline's sample)."""
    return prompt + TextGenerator.from_checkpoint(loaded).complete(prompt, sampling)[0].text

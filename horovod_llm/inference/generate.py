"""Text generation from a trained checkpoint: prompt in, completions out.

The prompt is encoded after BOS (so an empty prompt starts from BOS alone); a prompt
longer than the model's context keeps its last `block_size` ids (the model's
`generate_tokens` crops it). A completion ends at EOS, at the first `stop` string
(which is not included), or after `max_new_tokens` ids. `Continuation` holds those
rules for one sequence as it grows, for `complete` here and for the server's batches
(batching.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from horovod_llm.checkpoint import LoadedCheckpoint
from horovod_llm.data import tokenizer
from horovod_llm.inference.sampling import Sampling
from horovod_llm.model import GPT


@dataclass
class Completion:
    text: str  # the continuation only, without the prompt
    prompt_tokens: int  # ids of the prompt text (before cropping, without BOS)
    completion_tokens: int  # ids generated, including a final EOS or the ids of a stop string
    stop_reason: str  # "eos", "stop" or "length"


def stop_index(text: str, stop: tuple[str, ...]) -> int:
    """Where the first stop string starts in text, or -1."""
    return min((i for i in (text.find(s) for s in stop) if i >= 0), default=-1)


def held_back(text: str, stop: tuple[str, ...]) -> int:
    """Characters at the end of text that may not be sent yet while it grows: the
    longest tail that could begin a stop string, or an undecodable byte (a character
    whose other bytes are still to come)."""
    hold = max((n for s in stop for n in range(1, len(s)) if text.endswith(s[:n])), default=0)
    if text.endswith("\ufffd"):
        hold = max(hold, len(text) - len(text.rstrip("\ufffd")))
    return hold


class Continuation:
    """One sequence's completion as it grows id by id: its text and how it ends (EOS,
    a stop string, or max_new_tokens)."""

    def __init__(self, generator: TextGenerator, prompt_ids: list[int], sampling: Sampling):
        self.generator = generator
        self.prompt_ids = prompt_ids
        self.sampling = sampling
        self.new_ids: list[int] = []

    def text(self) -> str:
        return self.generator.continuation(self.prompt_ids, self.new_ids)

    def add(self, next_id: int) -> Completion | None:
        """Take the next id; the Completion once the sequence has ended, else None."""
        self.new_ids.append(next_id)
        done = len(self.new_ids)
        if next_id == tokenizer.EOS_ID:
            return Completion(self.generator.continuation(self.prompt_ids, self.new_ids[:-1]), len(self.prompt_ids), done, "eos")
        if self.sampling.stop:
            text = self.text()
            cut = stop_index(text, self.sampling.stop)
            if cut >= 0:
                return Completion(text[:cut], len(self.prompt_ids), done, "stop")
        if done >= self.sampling.max_new_tokens:
            return Completion(self.text(), len(self.prompt_ids), done, "length")
        return None

    def sendable_text(self) -> str:
        """The text so far less what `held_back` keeps: safe to stream before the end."""
        text = self.text()
        return text[: len(text) - held_back(text, self.sampling.stop)]


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
        idx = torch.tensor([[tokenizer.BOS_ID] + prompt_ids] * num_samples, dtype=torch.long, device=self.model.device)
        generator = torch.Generator().manual_seed(sampling.seed)
        steps = self.model.generate_tokens(
            idx, temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p, generator=generator, use_cache=self.use_cache
        )
        rows = [Continuation(self, prompt_ids, sampling) for _ in range(num_samples)]
        results: list[Completion | None] = [None] * num_samples
        for next_ids in steps:
            for row, next_id in enumerate(next_ids[:, 0].tolist()):
                if results[row] is None:  # a finished row's ids are ignored: the batch goes on for the others
                    results[row] = rows[row].add(next_id)
            if all(r is not None for r in results):
                return results


def generate_text(loaded: LoadedCheckpoint, prompt: str, sampling: Sampling) -> str:
    """The prompt followed by one sampled completion (the pipeline's sample)."""
    return prompt + TextGenerator.from_checkpoint(loaded).complete(prompt, sampling)[0].text

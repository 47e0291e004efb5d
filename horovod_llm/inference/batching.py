"""Continuous batching: the requests a server holds are decoded together, one forward
pass per step, each joining the batch as it arrives and leaving it as it ends.

A `Batcher` runs every forward pass on one thread of its own. A submitted `Job` (a
prompt, its sampling settings and a number of choices) waits until the batch has a
row free for each of its choices; its prompt is then prefilled alone (every id but
the last, into its rows of the shared key/value cache) and its rows join the running
batch, each in a free slot (a cache row, the lowest free first) that it keeps until it
ends. Each step feeds one id per row through `GPT.decode_slots`, every row at its own
position, and samples each row from its own logits with its own seeded
`torch.Generator` and its own settings (rows with the same settings are filtered
together, then drawn one by one). A row that ends (EOS, a stop string,
max_new_tokens) leaves at once and frees its slot; no row moves. A row whose context
overflows block_size is cropped and prefilled again alone, as `GPT.generate_tokens`
does (model.py's context policy).

A choice's text is therefore the same whatever else is decoded beside it: prefill and
sampling see that sequence alone, and `decode_slots` gives a row that keeps its slot
the same logits in any batch (rows decoded in fixed blocks of model.py's ROW_BLOCK, each
in its place). It is also what `TextGenerator.complete`
gives for one sample with the same seed, up to the last bits of the logits (that one
decodes a single row with a matrix-vector product), which could change a sampled id
only if its draw fell within about 1e-7 of a boundary between two ids. With max_batch 1
(one request at a time) the step is `complete`'s own, unpadded. Choice i > 0 of a job
uses its own seed, `choice_seed(seed, i)`.

Results go back through the job's `emit` callback, called on the batcher's thread:
`Delta` (streamed text, only for jobs with stream=True), `Finished` per choice, or
`Failed` once for the whole job.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from horovod_llm.data import tokenizer
from horovod_llm.inference.generate import Completion, Continuation, TextGenerator
from horovod_llm.inference.sampling import MAX_SEED, Sampling
from horovod_llm.model import ROW_BLOCK, KVCache, crop_length, draw, padded_rows, sampling_probs

log = logging.getLogger(__name__)

# An odd constant (2**64 / golden ratio) spreads the choices' seeds over the range.
_SEED_STRIDE = 0x9E3779B97F4A7C15


def choice_seed(seed: int, index: int) -> int:
    """The seed of a job's choice `index`: the job's own for choice 0, so that n=1
    gives what the same seed gives elsewhere."""
    return (seed + index * _SEED_STRIDE) % (MAX_SEED + 1)


@dataclass(frozen=True)
class Delta:
    index: int  # the choice
    text: str  # text that follows what earlier Deltas of this choice sent


@dataclass(frozen=True)
class Finished:
    index: int
    completion: Completion
    seconds: float  # from the job's admission into the batch to its end


@dataclass(frozen=True)
class Failed:
    error: Exception


Event = Delta | Finished | Failed


@dataclass
class Job:
    prompt: str
    sampling: Sampling
    emit: Callable[[Event], None]
    num_choices: int = 1
    stream: bool = False
    cancelled: bool = False  # set by the submitter (a client gone); its rows leave at the next step
    admitted_at: float = field(default=0.0, init=False)


@dataclass
class _Row:
    job: Job
    index: int
    continuation: Continuation
    generator: torch.Generator
    context: list[int]  # what the model conditions on; its last id is the next to decode
    sent: str = ""  # text already streamed


class Batcher:
    """One thread decoding up to `max_batch` sequences together."""

    def __init__(self, generator: TextGenerator, max_batch: int = 16):
        if max_batch < 1:
            raise ValueError(f"max_batch ({max_batch}) must be at least 1")
        self.generator = generator
        self.model = generator.model
        self.max_batch = max_batch
        # Rows decoded in fixed blocks so that none depends on the others (model.py's
        # ROW_BLOCK); with one row at most there are no others, and the unpadded step is
        # `generate`'s own.
        self.row_block = ROW_BLOCK if max_batch > 1 else None
        weight = self.model.wte.weight
        rows = padded_rows(max_batch) if self.row_block else max_batch
        self.cache = KVCache(self.model.config, rows, weight.dtype, weight.device)
        # slot i is row i of the cache, and a row keeps its slot: None where it is free.
        # Only the batcher's thread touches it.
        self.slots: list[_Row | None] = [None] * rows
        self.waiting: deque[Job] = deque()
        self.condition = threading.Condition()
        self.closed = False
        self.steps = 0  # decoding steps run, and the rows they decoded (their mean is the batch size)
        self.decoded_rows = 0
        self.thread = threading.Thread(target=self._run, name="batcher", daemon=True)
        self.thread.start()

    @property
    def rows(self) -> list[_Row]:
        """The rows being decoded, by slot."""
        return [row for row in self.slots if row is not None]

    def submit(self, job: Job) -> None:
        if not 1 <= job.num_choices <= self.max_batch:
            raise ValueError(f"num_choices ({job.num_choices}) must be between 1 and the batch's {self.max_batch} rows")
        with self.condition:
            if self.closed:
                raise RuntimeError("the batcher is closed")
            self.waiting.append(job)
            self.condition.notify()

    def close(self, timeout: float = 30.0) -> None:
        """Stop after the current step; jobs still waiting or running get Failed."""
        with self.condition:
            self.closed = True
            self.condition.notify()
        self.thread.join(timeout)

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.condition:
                    while not (self.closed or self.waiting or self.rows):
                        self.condition.wait()
                    if self.closed:
                        break
                    admitted = self._take_admissible()
                for job in admitted:  # prefilled outside the lock: submit never waits for it
                    self._admit(job)
                if self.rows:
                    self._step()
        gone = RuntimeError("the server is shutting down")
        for job in [*_jobs(self.rows), *self.waiting]:
            self._emit(job, Failed(gone))

    def _take_admissible(self) -> list[Job]:
        """Waiting jobs, in arrival order, for as long as their choices fit the batch."""
        admitted, free = [], self.max_batch - len(self.rows)
        while self.waiting and (self.waiting[0].cancelled or self.waiting[0].num_choices <= free):
            job = self.waiting.popleft()
            if not job.cancelled:
                admitted.append(job)
                free -= job.num_choices
        return admitted

    def _emit(self, job: Job, event: Event) -> None:
        try:
            job.emit(event)
        except Exception:  # a submitter that cannot take it any more: drop the job, keep the batch
            log.exception("delivering a result failed; the job is dropped")
            job.cancelled = True

    def _prefill(self, row: int, context: list[int]) -> None:
        """Every id of context but the last into cache row `row`, in one pass."""
        if len(context) > 1:
            self.model.hidden(torch.tensor([context[:-1]], dtype=torch.long, device=self.model.device), self.cache.rows(row, row + 1))

    def _admit(self, job: Job) -> None:
        slots = [slot for slot, row in enumerate(self.slots) if row is None][: job.num_choices]
        try:
            prompt_ids = self.generator.encode(job.prompt)
            context = ([tokenizer.BOS_ID] + prompt_ids)[-self.model.config.block_size :]
            self._prefill(slots[0], context)
            for index, slot in enumerate(slots):
                if index:
                    self.cache.copy_row(slots[0], slot)  # the same prompt: its keys and values copied
                generator = torch.Generator().manual_seed(choice_seed(job.sampling.seed, index))
                self.slots[slot] = _Row(job, index, Continuation(self.generator, prompt_ids, job.sampling), generator, list(context))
        except Exception as exc:
            log.exception("admitting a prompt of %d characters failed", len(job.prompt))
            for slot in slots:
                self.slots[slot] = None
            self._emit(job, Failed(exc))
            return
        job.admitted_at = time.perf_counter()

    def _step(self) -> None:
        slots = [slot for slot, row in enumerate(self.slots) if row is not None]
        rows = [self.slots[slot] for slot in slots]
        ids = torch.tensor([r.context[-1] for r in rows], dtype=torch.long, device=self.model.device)
        positions = torch.tensor([len(r.context) - 1 for r in rows], dtype=torch.long, device=self.model.device)
        try:
            logits = self._decode(slots, ids, positions)  # (B, vocab)
        except Exception as exc:
            log.exception("a decoding step of %d rows failed; their requests fail", len(rows))
            for job in _jobs(rows):
                self._emit(job, Failed(exc))
            self.slots = [None] * len(self.slots)
            return
        self.steps += 1
        self.decoded_rows += len(rows)
        next_ids = self._sample(rows, logits)
        for b, (slot, row) in enumerate(zip(slots, rows, strict=True)):
            job = row.job
            if job.cancelled:
                self.slots[slot] = None
                continue
            try:
                next_id = next_ids[b]
                if isinstance(next_id, Exception):
                    raise next_id
                completion = row.continuation.add(next_id)
                if completion is not None:
                    self._emit(job, Finished(row.index, completion, time.perf_counter() - job.admitted_at))
                    self.slots[slot] = None
                    continue
                if job.stream:
                    text = row.continuation.sendable_text()
                    if len(text) > len(row.sent) and text.startswith(row.sent):
                        self._emit(job, Delta(row.index, text[len(row.sent) :]))
                        row.sent = text
                row.context.append(next_id)
                if len(row.context) > self.model.config.block_size:
                    row.context = row.context[-crop_length(self.model.config.block_size) :]
                    self._prefill(slot, row.context)
            except Exception as exc:
                log.exception("sampling a row failed; its request fails")
                self._emit(job, Failed(exc))
                job.cancelled = True  # its other choices leave too
                self.slots[slot] = None

    def _decode(self, slots: list[int], ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Each row in its slot's block (`GPT.decode_slots`); with one slot, `complete`'s
        own unpadded step."""
        if self.row_block is None:
            return self.model.decode_step(ids, self.cache, positions, None)
        return self.model.decode_slots(slots, ids, self.cache, positions)

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[int | Exception]:
        """Each row's next id, drawn from its own logits with its own generator: the draw
        it gets alone. Rows with the same settings are filtered together (a row's
        probabilities do not depend on its neighbours: `sampling_probs`); only the draws
        go row by row. A group that fails gets its exception in place of ids."""
        groups: dict[tuple[float, int, float], list[int]] = {}
        for b, row in enumerate(rows):
            s = row.job.sampling
            groups.setdefault((s.temperature, s.top_k, s.top_p), []).append(b)
        next_ids: list[int | Exception] = [0] * len(rows)
        for (temperature, top_k, top_p), members in groups.items():
            try:
                if temperature == 0:
                    for b, next_id in zip(members, logits[members].argmax(dim=-1).tolist(), strict=True):
                        next_ids[b] = next_id
                    continue
                probs = sampling_probs(logits[members], temperature, top_k, top_p)
                # each row's number from its own generator, as sample_next draws it alone
                uniform = torch.cat([torch.rand(1, 1, generator=rows[b].generator) for b in members]).to(probs.device)
                for b, next_id in zip(members, draw(probs, uniform)[:, 0].tolist(), strict=True):
                    next_ids[b] = next_id
            except Exception as exc:
                for b in members:
                    next_ids[b] = exc
        return next_ids


def _jobs(rows: list[_Row]) -> list[Job]:
    """The jobs of these rows, each once."""
    return list({id(r.job): r.job for r in rows}.values())

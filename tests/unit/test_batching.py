"""The batcher on the tiny trained checkpoint: requests decoded together give what each
gives alone, rows join and leave, and a request's failure stays its own."""

import queue
import threading
import time

import pytest
import torch

from horovod_llm.data.tokenizer import EOS_ID
from horovod_llm.inference.batching import Batcher, Delta, Failed, Finished, Job, choice_seed
from horovod_llm.inference.generate import Continuation, TextGenerator, held_back
from horovod_llm.inference.sampling import Sampling
from tests import tiny_checkpoint

PROMPTS = ["QUEEN:\n", "KING:\n", "Made glorious", ""]
# Settings that vary from request to request: greedy and sampled, top-k, top-p, stop
# strings, and lengths past the tiny model's 16-id context (rows cropped on their own).
REQUESTS = [
    (PROMPTS[i % 4], Sampling(3 + (i * 7) % 45, 0.0 if i % 3 == 0 else 1.3, i % 5, 0.9 if i % 2 else 1.0, 1000 + i, ("our",) if i % 4 == 1 else ()))
    for i in range(40)
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as `serve` decodes by default: with two on a busy machine, the
    tiny model's many small operations spin-wait on each other (40x slower here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def generator() -> TextGenerator:
    return TextGenerator(tiny_checkpoint.tiny_model(), tiny_checkpoint.tiny_tokenizer())


class Collector:
    """Events of submitted jobs, by job number, with a wait for all of them to end."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.results: dict[int, list] = {}

    def job(self, number: int, prompt: str, sampling: Sampling, num_choices: int = 1, stream: bool = False) -> Job:
        self.results[number] = []
        return Job(prompt, sampling, lambda event: self.events.put((number, event)), num_choices, stream)

    def wait(self, numbers, num_choices: int = 1) -> dict[int, list]:
        """Every event of these jobs, once each has finished all its choices or failed."""
        open_jobs = {n: num_choices for n in numbers}
        while open_jobs:
            number, event = self.events.get(timeout=120)
            self.results[number].append(event)
            if isinstance(event, Failed):
                open_jobs.pop(number)
            elif isinstance(event, Finished):
                open_jobs[number] -= 1
                if not open_jobs[number]:
                    open_jobs.pop(number)
        return {n: self.results[n] for n in numbers}


def completions(events: list) -> list:
    return [e.completion for e in sorted((e for e in events if isinstance(e, Finished)), key=lambda e: e.index)]


def test_requests_decoded_together_give_what_each_gives_alone(generator):
    batcher = Batcher(generator, max_batch=8)  # 40 requests: they wait, join and leave
    try:
        together = Collector()
        for number, (prompt, sampling) in enumerate(REQUESTS):
            batcher.submit(together.job(number, prompt, sampling))
        together = together.wait(range(len(REQUESTS)))
        assert batcher.decoded_rows / batcher.steps > 4  # batched indeed
        steps, rows = batcher.steps, batcher.decoded_rows
        alone = Collector()
        for number, (prompt, sampling) in enumerate(REQUESTS):  # one at a time
            batcher.submit(alone.job(number, prompt, sampling))
            alone.wait([number])
        assert batcher.decoded_rows - rows == batcher.steps - steps  # batches of one
    finally:
        batcher.close()
    for number, (prompt, sampling) in enumerate(REQUESTS):
        expected = generator.complete(prompt, sampling)[0]
        assert completions(together[number]) == completions(alone.results[number]) == [expected], (number, sampling)
    assert {c.stop_reason for n in together for c in completions(together[n])} == {"eos", "stop", "length"}
    assert len({completions(together[n])[0].text for n in together}) > 15


def test_a_request_joins_a_running_batch_and_its_neighbours_are_unchanged(generator):
    long = Sampling(max_new_tokens=60, temperature=1.3, top_k=0, seed=5)
    short = Sampling(max_new_tokens=6, temperature=1.3, top_k=0, seed=6)
    batcher = Batcher(generator, max_batch=4)
    try:
        events = Collector()
        first = threading.Event()

        def emit_first(event):  # the long request's first streamed text: it is decoding
            events.events.put((0, event))
            first.set()

        events.results[0] = []
        batcher.submit(Job("KING:\n", long, emit_first, stream=True))
        assert first.wait(timeout=60)
        batcher.submit(events.job(1, "QUEEN:\n", short))  # joins while the long one runs
        results = events.wait([0, 1])
    finally:
        batcher.close()
    assert completions(results[0]) == generator.complete("KING:\n", long)
    assert completions(results[1]) == generator.complete("QUEEN:\n", short)
    # the short one ended and left while the long one went on
    assert results[0][-1].seconds > results[1][-1].seconds


def test_choices_are_rows_with_their_own_seeds(generator):
    sampling = Sampling(max_new_tokens=20, temperature=1.5, top_k=0, seed=7)
    batcher = Batcher(generator, max_batch=4)
    try:
        events = Collector()
        batcher.submit(events.job(0, "KING:\n", sampling, num_choices=3))
        choices = completions(events.wait([0], num_choices=3)[0])
        with pytest.raises(ValueError, match="num_choices"):
            batcher.submit(events.job(1, "KING:\n", sampling, num_choices=5))
    finally:
        batcher.close()
    assert choices[0] == generator.complete("KING:\n", sampling)[0]  # choice 0 is the seed's own
    for index, choice in enumerate(choices):
        seeded = Sampling(max_new_tokens=20, temperature=1.5, top_k=0, seed=choice_seed(7, index))
        assert choice == generator.complete("KING:\n", seeded)[0]
    assert len({c.text for c in choices}) == 3


def test_streamed_text_adds_up_to_the_completion_and_never_shows_a_stop_string(generator):
    batcher = Batcher(generator, max_batch=4)
    try:
        events = Collector()
        samplings = [Sampling(max_new_tokens=40, temperature=0.0), Sampling(max_new_tokens=40, temperature=0.0, stop=("clouds",))]
        for number, sampling in enumerate(samplings):
            batcher.submit(events.job(number, "QUEEN:\n", sampling, stream=True))
        results = events.wait([0, 1])
    finally:
        batcher.close()
    for number in (0, 1):
        deltas = [e.text for e in results[number] if isinstance(e, Delta)]
        final = completions(results[number])[0].text
        assert len(deltas) > 3 and final.startswith("".join(deltas))
    assert completions(results[1])[0].text == "And all the "
    assert "cl" not in "".join(e.text for e in results[1] if isinstance(e, Delta))


class FailsOn(TextGenerator):
    def encode(self, prompt):
        if prompt == "boom":
            raise RuntimeError("a bug")
        return super().encode(prompt)


def never_ends(model):
    """The model with EOS never drawn after the prompt: the tiny model draws it within 50
    tokens, and a row that ends by itself before the test cancels it (a busy machine
    delays the test's thread) would leave for another reason."""
    decode = model.decode_step

    def decode_step(*args, **kwargs):
        logits = decode(*args, **kwargs)
        logits[:, EOS_ID] = float("-inf")
        return logits

    model.decode_step = decode_step
    return model


def test_a_failing_request_fails_alone_and_a_cancelled_one_leaves(generator):
    batcher = Batcher(FailsOn(never_ends(tiny_checkpoint.tiny_model()), tiny_checkpoint.tiny_tokenizer()), max_batch=4)
    try:
        events = Collector()
        cancelled = events.job(2, "KING:\n", Sampling(max_new_tokens=1_000_000, temperature=1.0, top_k=0))
        batcher.submit(cancelled)
        batcher.submit(events.job(0, "boom", Sampling()))
        batcher.submit(events.job(1, "QUEEN:\n", Sampling(max_new_tokens=10, temperature=0.0)))
        results = events.wait([0, 1])
        assert [type(e) for e in results[0]] == [Failed] and "a bug" in str(results[0][0].error)
        assert completions(results[1]) == generator.complete("QUEEN:\n", Sampling(max_new_tokens=10, temperature=0.0))
        cancelled.cancelled = True
        steps = batcher.steps  # from the cancellation on: a busy machine may delay it
        batcher.submit(events.job(3, "QUEEN:\n", Sampling(max_new_tokens=2, temperature=0.0)))
        events.wait([3])
        assert batcher.steps - steps < 10 and not batcher.rows  # the cancelled row (1000 tokens) left at once
    finally:
        batcher.close()
    assert not any(isinstance(e, Finished) for e in events.results[2])


def test_a_row_keeps_its_slot_while_others_leave_and_join():
    # A row's bits depend on its place in its block of cache rows on some CPUs (MKL's AVX2
    # path on Intel: model.py's ROW_BLOCK), so a row never moves: a gap waits for the next
    # request instead of the last row.
    batcher = Batcher(TextGenerator(never_ends(tiny_checkpoint.tiny_model()), tiny_checkpoint.tiny_tokenizer()), max_batch=4)
    try:
        events = Collector()
        short = events.job(0, "QUEEN:\n", Sampling(max_new_tokens=2, temperature=0.0))
        long = events.job(1, "KING:\n", Sampling(max_new_tokens=1_000_000, temperature=1.0, top_k=0))
        batcher.submit(short)
        batcher.submit(long)
        events.wait([0])
        deadline = time.monotonic() + 30
        while batcher.slots[0] is not None and time.monotonic() < deadline:  # freed just after its Finished
            time.sleep(0.01)
        assert [row and row.job for row in batcher.slots] == [None, long] + [None] * (len(batcher.slots) - 2)
        batcher.submit(events.job(2, "Made glorious", Sampling(max_new_tokens=3, temperature=0.0)))
        events.wait([2])  # it decoded in the lowest free slot, beside the long row, which stayed
        assert batcher.slots[1].job is long and batcher.decoded_rows > batcher.steps
        long.cancelled = True
    finally:
        batcher.close()


def test_held_back_text_is_a_possible_stop_string_start_or_a_partial_character():
    assert held_back("And all the cl", ("clouds",)) == 2
    assert held_back("And all the", ("clouds",)) == 0
    assert held_back("line\n", ("\n\n", "xyz")) == 1
    assert held_back("caf\ufffd", ()) == 1


def test_a_continuation_ends_as_complete_ends(generator):
    prompt_ids = generator.encode("QUEEN:\n")
    row = Continuation(generator, prompt_ids, Sampling(max_new_tokens=3))
    ids = generator.encode("QUEEN:\nAnd all the clouds")[len(prompt_ids) :]
    assert [row.add(i) for i in ids[:2]] == [None, None]
    assert row.add(ids[2]).stop_reason == "length"

"""TextGenerator on the tiny trained checkpoint: every sampling option on real outputs."""

import pytest
import torch

from horovod_llm.data import tokenizer
from horovod_llm.inference.generate import TextGenerator
from horovod_llm.inference.sampling import Sampling
from tests import tiny_checkpoint

QUEEN = "And all the clouds that lour'd upon our house\nIn the deep bosom of the ocean buried.\n"


@pytest.fixture(scope="module")
def generator() -> TextGenerator:
    return TextGenerator(tiny_checkpoint.tiny_model(), tiny_checkpoint.tiny_tokenizer())


def greedy(**overrides) -> Sampling:
    return Sampling(**{"max_new_tokens": 60, "temperature": 0.0, **overrides})


def test_greedy_recites_the_passage_and_stops_at_eos(generator):
    completion = generator.complete("QUEEN:\n", greedy())[0]
    assert completion.text == QUEEN
    assert completion.stop_reason == "eos"
    assert completion.prompt_tokens == len(tiny_checkpoint.encode("QUEEN:\n"))
    # the passage's ids as they follow the prompt's, and EOS
    assert completion.completion_tokens == len(tiny_checkpoint.encode("QUEEN:\n" + QUEEN)) - completion.prompt_tokens + 1


def test_greedy_is_deterministic_and_the_same_without_the_cache(generator):
    first = generator.complete("Made glorious", greedy())[0]
    assert first.text == " summer by this sun of York;\n"  # the space that starts the word is kept
    assert generator.complete("Made glorious", greedy())[0] == first
    uncached = TextGenerator(tiny_checkpoint.tiny_model(), tiny_checkpoint.tiny_tokenizer(), use_cache=False)
    assert uncached.complete("Made glorious", greedy())[0] == first


def test_the_same_seed_gives_the_same_text_and_other_seeds_other_texts(generator):
    def sample(seed):
        return generator.complete("KING:\n", Sampling(max_new_tokens=30, temperature=1.5, top_k=0, seed=seed))[0].text

    assert sample(3) == sample(3)
    assert len({sample(seed) for seed in range(6)}) >= 3


def test_num_samples_are_drawn_together_and_reproducibly(generator):
    sampling = Sampling(max_new_tokens=20, temperature=1.5, top_k=0, seed=7)
    batch = generator.complete("KING:\n", sampling, num_samples=4)
    assert len(batch) == 4 and len({c.text for c in batch}) >= 2
    assert generator.complete("KING:\n", sampling, num_samples=4) == batch
    assert all(c.completion_tokens <= 20 for c in batch)


def test_max_new_tokens_bounds_the_completion(generator):
    completion = generator.complete("QUEEN:\n", greedy(max_new_tokens=5))[0]
    assert completion.stop_reason == "length" and completion.completion_tokens == 5
    assert QUEEN.startswith(completion.text) and len(completion.text) < len(QUEEN)


@pytest.mark.parametrize("stop", ["lour'd", "\n", "ocean"])
def test_stop_strings_end_the_text_before_them(generator, stop):
    completion = generator.complete("QUEEN:\n", greedy(stop=(stop, "never appears")))[0]
    assert completion.stop_reason == "stop"
    assert completion.text == QUEEN[: QUEEN.index(stop)]


def test_top_k_1_and_a_tiny_top_p_are_greedy(generator):
    expected = generator.complete("QUEEN:\n", greedy())[0].text
    for sampling in (Sampling(max_new_tokens=60, temperature=1.0, top_k=1, seed=5), Sampling(max_new_tokens=60, temperature=1.0, top_k=0, top_p=1e-6, seed=5)):
        assert generator.complete("QUEEN:\n", sampling)[0].text == expected


def test_top_p_narrows_the_choices(generator):
    def texts(top_p):
        return {generator.complete("KING:\n", Sampling(max_new_tokens=12, temperature=2.0, top_k=0, top_p=top_p, seed=s))[0].text for s in range(8)}

    assert len(texts(0.3)) < len(texts(1.0))


def test_an_empty_prompt_starts_from_bos(generator):
    completion = generator.complete("", greedy(max_new_tokens=10))[0]
    assert completion.prompt_tokens == 0 and completion.completion_tokens >= 1
    ids = generator.model.generate(torch.tensor([[tokenizer.BOS_ID]]), 1, temperature=0)
    assert completion.text.startswith(tokenizer.decode(generator.processor, ids[0, 1:].tolist()))


def test_a_prompt_longer_than_the_context_is_cropped_to_its_last_block_size_ids(generator):
    prompt = "KING:\n" + tiny_checkpoint.DOCUMENTS[1] * 5 + "QUEEN:\n"
    prompt_ids = tiny_checkpoint.encode(prompt)
    assert len(prompt_ids) > 4 * tiny_checkpoint.BLOCK_SIZE
    completion = generator.complete(prompt, greedy(max_new_tokens=8))[0]
    assert completion.prompt_tokens == len(prompt_ids)
    cropped = generator.model.generate(torch.tensor([prompt_ids[-tiny_checkpoint.BLOCK_SIZE :]]), 8, temperature=0)
    assert completion.text and completion.text == generator.continuation(prompt_ids, cropped[0, tiny_checkpoint.BLOCK_SIZE :].tolist())


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        ({"max_new_tokens": 0}, "max_new_tokens (0)"),
        ({"max_new_tokens": 10**9}, "max_new_tokens (1000000000)"),
        ({"temperature": -0.5}, "temperature (-0.5)"),
        ({"temperature": 1e9}, "temperature (1000000000.0)"),
        ({"temperature": float("nan")}, "temperature (nan)"),
        ({"top_k": -1}, "top_k (-1)"),
        ({"top_p": 0.0}, "top_p (0.0)"),
        ({"top_p": 1.5}, "top_p (1.5)"),
        ({"seed": -1}, "seed (-1)"),
        ({"stop": ("",)}, "stop ('')"),
    ],
)
def test_invalid_sampling_settings_are_named(overrides, fragment):
    problems = Sampling(**overrides).problems()
    assert len(problems) == 1 and problems[0].startswith(fragment)
    assert Sampling().problems() == []


def test_the_config_the_flags_and_the_server_take_their_defaults_from_sampling():
    # issue 13: the settings were declared four times, with two sets of rules
    from horovod_llm.cli import build_parser
    from horovod_llm.config import load_config
    from horovod_llm.inference.sampling import sampling_fields
    from horovod_llm.inference.serve import Limits, request_model

    defaults = Sampling()
    assert load_config(None).generate.sampling() == defaults
    args = build_parser().parse_args(["generate", "--checkpoint", "x"])
    assert {f.name: getattr(args, f.name) for f in sampling_fields()} | {"stop": ()} == {f.name: getattr(defaults, f.name) for f in sampling_fields()}
    body = request_model(Limits())()
    assert (body.max_new_tokens, body.temperature, body.top_k, body.top_p, body.stop) == (200, 0.8, 50, 1.0, [])
    assert request_model(Limits(max_new_tokens=64))().max_new_tokens == 64  # never over the server's own limit


def test_every_bad_setting_is_reported_at_once_by_the_config_and_the_cli():
    from horovod_llm.cli import main
    from horovod_llm.config import load_config
    from horovod_llm.errors import UserError

    with pytest.raises(UserError) as refused:
        load_config(None, ["generate.temperature=-1", "generate.top_p=2", "generate.max_new_tokens=0"])
    assert all(f"generate.{name} (" in str(refused.value) for name in ("temperature", "top_p", "max_new_tokens"))
    assert main(["generate", "--checkpoint", "x", "--temperature", "-1", "--top-p", "2", "--stop", ""]) == 2


def test_other_ranks_log_through_a_null_logger(caplog):
    import logging

    from horovod_llm.log import rank_logger

    with caplog.at_level(logging.INFO, logger="horovod_llm.test"):
        rank_logger("horovod_llm.test", is_main=False).warning("from rank 1")
        rank_logger("horovod_llm.test", is_main=True).info("from rank 0")
    assert [r.message for r in caplog.records] == ["from rank 0"]

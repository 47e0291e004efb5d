"""The recipe: unset settings chosen from the corpus's size and the budget; explicit ones win."""

import pytest

from horovod_llm.config import CONFIG_DIR, load_config
from horovod_llm.errors import UserError
from horovod_llm.training import recipe

LOCAL = CONFIG_DIR / "local.yaml"


def test_every_unset_setting_is_filled_and_validated():
    config = recipe.resolve(load_config(LOCAL), corpus_bytes=5_300_000)
    chosen = recipe.choose(5_300_000, 60 * config.train.max_minutes)
    assert config.tokenizer.vocab_size == chosen.vocab_size and config.model.n_embd == chosen.n_embd
    assert config.train.min_lr == pytest.approx(chosen.learning_rate / 10)
    assert recipe.resolve(config, corpus_bytes=5) is config  # resolved once, the same after


def test_explicit_settings_win_and_what_depends_on_them_follows():
    config = recipe.resolve(load_config(LOCAL, ["model.n_embd=96", "train.learning_rate=0.003", "tokenizer.vocab_size=700"]), 1_000_000)
    assert (config.model.n_embd, config.tokenizer.vocab_size, config.train.learning_rate) == (96, 700, 0.003)
    assert 96 % config.model.n_head == 0  # a head count that divides the width given
    assert config.train.min_lr == pytest.approx(0.0003)


def test_the_vocabulary_grows_with_the_corpus_and_the_model_with_the_budget():
    assert recipe.choose(1_000_000, 300).vocab_size < recipe.choose(50_000_000, 300).vocab_size
    assert recipe.choose(1_000_000, 300).n_embd < recipe.choose(1_000_000, 4 * 3600).n_embd
    small = recipe.choose(1_000_000, 3 * 3600)
    assert small.dropout > 0  # many epochs of a small corpus: dropout pays off


def test_a_character_tokenizer_gets_a_ceiling_not_a_bpe_size():
    config = recipe.resolve(load_config(LOCAL, ["tokenizer.model_type=char"]), 1_000_000)
    assert config.tokenizer.vocab_size == recipe.CHAR_VOCABULARY


def test_explicit_settings_that_contradict_the_recipe_are_named():
    # half a window where the budget sees the text about once; an eighth apart where it repeats
    assert recipe.resolve(load_config(LOCAL, ["data.window_size=16", "train.max_minutes=1"]), 5_000_000).data.overlap == 8
    assert recipe.resolve(load_config(LOCAL, ["data.window_size=16"]), 1_000_000).data.overlap == 14
    with pytest.raises(UserError, match=r"data.window_size \(\d+\) must be larger than data.overlap \(4000\)"):
        recipe.resolve(load_config(LOCAL, ["data.overlap=4000"]), 1_000_000)


def test_a_short_budget_buys_steps_with_a_shallow_model_and_a_short_context():
    """The sweeps' finding (bench/results.md): minutes of training are limited by steps, so
    the rule trades depth and context for them; hours get the deeper, longer model."""
    short, long = recipe.choose(1_100_000, 90), recipe.choose(1_100_000, 2 * 3600)
    assert short.n_layer < long.n_layer and short.window_size < long.window_size
    assert short.overlap == short.window_size // 2 and short.dropout == 0.0


def test_dropout_follows_the_epochs_the_trainer_really_reaches():
    # 1.1 MB of Shakespeare: at 350 s the trainer's measured pace reaches 11 epochs, where
    # dropout took held-out text from 1.748 to 1.641 nats/char (bench/sweep.py); at 90 s it
    # sees the text 3 times, where dropout made no clear difference (the 90 s sweep's
    # dropout_0.1 row: 1.975 against 1.997, one seed each).
    from horovod_llm.training.recipe import choose

    assert choose(1_100_000, 350.0).dropout == 0.1
    assert choose(1_100_000, 90.0).dropout == 0.0


def test_windows_start_closer_together_where_the_budget_repeats_the_text():
    # 0.88 MB at 350 s (31 epochs by the rule's estimate): a stride of 8 tokens scored 1.630
    # nats/char against 1.684 at the half window's 32 (bench/sweep.py, issue 28); 90 s sees
    # it 8 times, and a 20 MB corpus 350 s sees about once: half a window.
    assert recipe.choose(880_000, 350.0).overlap == 64 - 8
    assert recipe.choose(880_000, 90.0).overlap == 32
    assert recipe.choose(20_000_000, 350.0).overlap == 32


def test_dropout_grows_with_how_often_the_text_repeats():
    # 0.37 MB of Python's documentation at 350 s (72 epochs by the estimate): dropout 0.2
    # scored 1.249 nats/char against 0.1's 1.373 (bench/sweep.py, issue 28)
    assert recipe.choose(373_000, 350.0).dropout == 0.2
    assert recipe.choose(880_000, 350.0).dropout == 0.1

import pytest

from horovod_llm.schedule import learning_rate_at


def lr(step, total=100):
    return learning_rate_at(step, max_lr=1.0, min_lr=0.1, warmup_steps=10, total_steps=total)


def test_linear_warmup_reaches_max_lr():
    assert lr(1) == pytest.approx(0.1)
    assert lr(5) == pytest.approx(0.5)
    assert lr(10) == pytest.approx(1.0)


def test_cosine_decay_ends_at_min_lr_and_is_monotonic():
    values = [lr(s) for s in range(10, 101)]
    assert values == sorted(values, reverse=True)
    assert lr(100) == pytest.approx(0.1)
    assert lr(55) == pytest.approx(0.55)  # halfway through the decay


def test_no_warmup_starts_at_max_lr():
    assert learning_rate_at(1, max_lr=2.0, min_lr=0.0, warmup_steps=0, total_steps=1000) == pytest.approx(2.0, rel=1e-4)

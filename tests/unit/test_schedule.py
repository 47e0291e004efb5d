import pytest

from horovod_llm.training.schedule import TrainingClock, learning_rate_at


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


def test_under_a_budget_the_decay_follows_the_share_of_time_spent():
    # issue 14: the learning rate follows the elapsed fraction of the budget
    schedule = dict(max_lr=1.0, min_lr=0.1, warmup_steps=10)
    assert learning_rate_at(20, total_steps=None, elapsed_fraction=0.5, **schedule) == pytest.approx(0.55)
    assert learning_rate_at(20, total_steps=None, elapsed_fraction=1.0, **schedule) == pytest.approx(0.1)
    # with both, whichever is further along: here the steps
    assert learning_rate_at(100, total_steps=100, elapsed_fraction=0.2, **schedule) == pytest.approx(0.1)
    assert learning_rate_at(5, total_steps=None, elapsed_fraction=0.9, **schedule) == pytest.approx(0.5)  # warm-up first


def test_the_clock_is_synced_then_extrapolated_by_the_step_time():
    clock = TrainingClock(budget_seconds=100.0, synced_seconds=30.0, synced_step=10)  # resumed after 30 s
    assert clock.seconds_at(15) == 30.0 and not clock.spent(15)  # no step time known yet
    clock.sync(20, trained_seconds=40.0, seconds_per_step=2.0)
    assert clock.seconds_at(45) == 90.0 and clock.fraction(45) == pytest.approx(0.9)
    assert not clock.spent(49) and clock.spent(50)
    assert clock.fraction(80) == 1.0
    assert not TrainingClock(0.0, 0.0, 0, 5.0).spent(10**6)  # no budget, never spent
    # steps that went faster than the estimate never move the clock back
    clock.sync(50, trained_seconds=95.0, seconds_per_step=1.0)
    assert clock.seconds_at(50) == 100.0 and clock.seconds_at(51) == 101.0

"""training/collection.py: during the loop Python's collector runs only at the steps
every rank shares, walks only what the loop made, and is as it was afterwards."""

import gc

from horovod_llm.training.collection import collections_at_steps


class Cycle:
    def __init__(self):
        self.me = self


def test_the_loop_collects_at_its_interval_only_and_restores_the_collector():
    gc.collect()
    assert gc.isenabled()
    events = []

    def record(phase, info):
        if phase == "start":
            events.append(info["generation"])

    gc.callbacks.append(record)
    try:
        with collections_at_steps(5) as collector:
            frozen = gc.get_freeze_count()
            assert not gc.isenabled() and frozen > 0
            events.clear()
            for step in range(1, 11):
                for _ in range(2000):  # far past generation 0's threshold of 700 each step
                    Cycle()
                collector.after_step(step)
            assert events == [2, 2]  # steps 5 and 10, nothing in between
        assert gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.callbacks.remove(record)


def test_interval_zero_leaves_the_collector_alone():
    with collections_at_steps(0) as collector:
        assert gc.isenabled() and gc.get_freeze_count() == 0
        collector.after_step(50)


def test_a_disabled_collector_stays_disabled():
    gc.disable()
    try:
        with collections_at_steps(5):
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()

"""The arithmetic and rules of cluster.py and spark_tasks.py's lost-host helpers (pure)."""

import pytest

from horovod_llm.launchers.cluster import Executor, HostView, task_slots
from horovod_llm.launchers.spark_tasks import spark_host


def test_slots_are_whole_per_executor():
    # issue 15: executors of 10 and 6 cores give 2 + 1 slots of 4 cores, not 16 // 4
    assert task_slots([Executor("0", "a", 10), Executor("1", "b", 6)], 4) == 3
    assert task_slots([Executor("0", "a", 8), Executor("1", "b", 8)], 4) == 4
    assert task_slots([], 1) == 0


@pytest.mark.parametrize(
    "address, problem",
    [
        ("127.0.1.1", "node2 resolves its own name to 127.0.1.1"),
        ("127.0.0.1", "node2 resolves its own name to 127.0.0.1"),
        ("::1", "node2 resolves its own name to ::1"),
        (None, "node2 cannot resolve its own name"),
        ("10.0.0.2", None),
    ],
)
def test_a_host_is_unreachable_at_a_loopback_or_missing_address(address, problem):
    assert HostView("node2", address, ("eth0", "lo")).unreachable() == problem


def test_the_host_name_is_read_from_horovods_host_hash():
    assert spark_host("ip-10-0-0-7.ec2.internal-201dc13cd573b15d033cbc58ce829794") == "ip-10-0-0-7.ec2.internal"
    assert spark_host("node2") == "node2"

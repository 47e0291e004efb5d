"""Naming the rank that failed first, whatever order the launcher saw the ranks exit in."""

import pytest

from horovod_llm.launchers.exits import PEER_LOST_STATUS, SILENT_STATUS, RankExit, describe_status, first_failure, job_failure
from horovod_llm.launchers.horovodrun import horovodrun_exit


def test_the_killed_rank_is_named_even_when_its_peer_exits_first():
    # issue 12: rank 0 lost its peer and exited a moment before the killed rank 1 was seen
    exits = [RankExit(0, PEER_LOST_STATUS, 10.0), RankExit(1, -9, 11.0)]
    assert first_failure(exits) == exits[1]
    failure = job_failure(exits)
    assert str(failure).startswith("training rank 1 exited with status -9 (SIGKILL); rank 0 stopped because of it")
    assert failure.retryable


def test_a_rank_with_an_error_of_its_own_is_not_retried():
    failure = job_failure([RankExit(1, PEER_LOST_STATUS, 1.0), RankExit(0, 2, 2.0)])
    assert "training rank 0 stopped on an error" in str(failure) and "rank 1 stopped because of it" in str(failure)
    assert not failure.retryable


def test_the_earliest_of_several_real_failures_wins_and_ties_go_to_the_lower_rank():
    assert first_failure([RankExit(2, 1, 5.0), RankExit(1, -9, 4.0), RankExit(0, PEER_LOST_STATUS, 1.0)]).rank == 1
    assert first_failure([RankExit(3, -9, 4.0), RankExit(1, -9, 4.0)]).rank == 1


def test_when_every_rank_only_lost_a_peer_the_first_is_named():
    failure = job_failure([RankExit(1, PEER_LOST_STATUS, 2.0), RankExit(0, PEER_LOST_STATUS, 1.0)])
    assert "training rank 0 lost contact with the other ranks" in str(failure)


def test_a_silent_rank_is_named_with_its_host_and_the_job_may_restart():
    # issue 15: rank 1's host vanished; rank 0's collective timed out; rank 1 never answered
    exits = [RankExit(0, PEER_LOST_STATUS, 30.0, "node3"), RankExit(1, SILENT_STATUS, 45.0, "node2")]
    failure = job_failure(exits)
    assert str(failure) == (
        "training rank 1 on host node2 stopped answering (the host is lost or unreachable); rank 0 stopped because of it: "
        "see the cluster manager's view of node2"
    )
    assert failure.retryable


def test_a_job_where_every_rank_succeeded_has_no_failure():
    assert job_failure([RankExit(0, 0, 1.0), RankExit(1, 0, 1.0)]) is None
    assert job_failure([]) is None


@pytest.mark.parametrize(
    "status, text",
    [(-9, "status -9 (SIGKILL)"), (137, "status 137 (SIGKILL)"), (-15, "status -15 (SIGTERM)"), (1, "status 1"), (-200, "status -200")],
)
def test_statuses_name_their_signal(status, text):
    assert describe_status(status) == text


def test_horovodrun_exit_lines_are_parsed():
    assert horovodrun_exit("Process 1 exit with status code -9.\n", 0) == RankExit(1, -9, 0.0)
    assert horovodrun_exit("[1,0]<stderr>:Process 1 exit with status code 3.", 0) is None  # a rank's own output
    assert horovodrun_exit("step 3/8 | loss 5.1", 0) is None

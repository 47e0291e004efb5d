"""Reading torchrun's reports of its rank's exit from the ranks' log stream (unit)."""

import io

from horovod_llm.launchers.exits import PEER_LOST_STATUS, job_failure
from horovod_llm.launchers.torch_distributor import RankExitLog

KILLED_RANK_1 = """\
[rank0]: RuntimeError: [gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:31649
Root Cause (first observed failure):
[0]:
  time      : 2026-11-30_22:36:21
  host      : localhost
  rank      : 1 (local_rank: 0)
  exitcode  : -9 (pid: 21587)  (SIGKILL)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 21587
"""


def report(rank: int, status: int) -> str:
    return f"Root Cause (first observed failure):\n[0]:\n  host      : localhost\n  rank      : {rank} (local_rank: 0)\n  exitcode  : {status} (pid: 1)\n"


def test_each_rank_exit_is_read_in_the_order_it_arrives_and_passed_through():
    terminal = io.StringIO()
    log = RankExitLog(terminal)
    for chunk in (KILLED_RANK_1[:70], KILLED_RANK_1[70:], report(0, PEER_LOST_STATUS)):  # lines split across writes
        log.write(chunk)
    assert [(e.rank, e.status) for e in log.exits] == [(1, -9), (0, PEER_LOST_STATUS)]
    assert terminal.getvalue() == KILLED_RANK_1 + report(0, PEER_LOST_STATUS)
    message = str(job_failure(log.exits, "TorchDistributor"))
    assert message.startswith("training rank 1 exited with status -9 (SIGKILL); rank 0 stopped because of it")


def test_the_rank_that_failed_on_its_own_is_named_even_when_a_bystander_reports_first():
    log = RankExitLog(io.StringIO())
    log.write(report(0, PEER_LOST_STATUS) + report(1, 2))
    failure = job_failure(log.exits, "TorchDistributor")
    assert str(failure).startswith("training rank 1 stopped on an error") and not failure.retryable


def test_a_rank_reported_twice_counts_once_and_other_lines_are_ignored():
    log = RankExitLog(io.StringIO())
    log.write("rank: 5 of something\nexitcode : 7\n" + report(1, -9) + report(1, -9))
    assert [(e.rank, e.status) for e in log.exits] == [(1, -9)]


def test_a_collective_that_lost_its_peer_is_told_from_other_errors():
    from horovod_llm.training.comm import lost_peer
    from horovod_llm.training.pipe_barrier import LOST, RankLost

    closed = "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:31649."
    assert lost_peer(RuntimeError(closed))
    assert lost_peer(RuntimeError("Connection reset by peer"))
    assert not lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    assert not lost_peer(ValueError("Connection closed by peer"))  # only what torch.distributed raises
    assert lost_peer(RankLost(LOST))  # the shared-memory reduction's pipes closed


def test_a_rank_whose_host_spark_dropped_is_named_lost(monkeypatch):
    import horovod_llm.launchers.torch_distributor as launch_torch

    live = [{"node2", "node3.ec2.internal"}, {"node2"}]  # the status store learns of the loss late
    monkeypatch.setattr(launch_torch, "executor_hosts", lambda context: live.pop(0) if len(live) > 1 else live[0])
    lost = launch_torch.ranks_on_lost_hosts(None, {0: "node2", 1: "node3"}, settle_s=5)
    assert [(e.rank, e.host) for e in lost] == [(1, "node3")]
    assert str(job_failure(lost, "TorchDistributor")).startswith("training rank 1 on host node3 stopped answering")


def test_no_rank_is_named_when_spark_and_the_ranks_spell_hosts_apart(monkeypatch):
    import horovod_llm.launchers.torch_distributor as launch_torch

    monkeypatch.setattr(launch_torch, "executor_hosts", lambda context: {"10.0.0.2", "10.0.0.3"})
    assert launch_torch.ranks_on_lost_hosts(None, {0: "node2", 1: "node3"}, settle_s=0.5) == []

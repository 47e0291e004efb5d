"""Which rank failed first: the one to name when a training job dies.

When one rank dies (killed, out of memory, an error of its own), the others fail too, a
moment later, with Horovod's "has been shut down" error: their collectives lost a peer.
Horovod's launchers report whichever rank *exited* first, which is often one of those
bystanders, and that sends the user to the wrong log. So a rank that stops only because
a peer was lost exits with `PEER_LOST_STATUS`, and the launcher, which sees every rank's
exit status, names the first rank that exited for a reason of its own.

Pure functions. Each launcher collects the exits its own way (horovod_spark.py,
horovodrun.py, torch_distributor.py) and turns them into its failure with `job_failed`.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from horovod_llm.errors import JobFailed

# A rank that stopped because another rank was lost (HorovodInternalError). 2 is the
# status of a rank that reported a user error itself (`error: ...`).
USER_ERROR_STATUS = 2
PEER_LOST_STATUS = 3
# Under TorchDistributor, which reports only the first task of its Spark stage to fail
# and stops the others, a rank that only lost a peer waits this long before it exits,
# so that the first to fail is the rank that failed on its own (a killed rank's torchrun
# notices within 0.1 s).
PEER_LOST_GRACE_S = 5.0
# Not a process status: the launcher's mark for a rank whose exit never came back after
# the others had stopped, because its host is gone or unreachable (horovod_spark.py,
# torch_distributor.py).
SILENT_STATUS = -1000


@dataclass(frozen=True)
class RankExit:
    rank: int
    status: int  # negative: killed by that signal (as subprocess reports it)
    at: float  # when the launcher saw it end (seconds; only the order matters)
    host: str | None = None  # where it ran, when the launcher knows


def describe_status(status: int) -> str:
    """-9 -> 'status -9 (SIGKILL)'; 137 (a shell's 128 + 9) -> 'status 137 (SIGKILL)'."""
    number = -status if status < 0 else status - 128 if 128 < status < 160 else None
    try:
        name = signal.Signals(number).name if number else None
    except ValueError:
        name = None
    return f"status {status} ({name})" if name else f"status {status}"


def first_failure(exits: list[RankExit]) -> RankExit | None:
    """The rank that failed on its own first: the earliest non-zero exit that is not
    PEER_LOST_STATUS; if every failed rank only lost a peer, the earliest of them."""
    failed = sorted((e for e in exits if e.status != 0), key=lambda e: (e.at, e.rank))
    own = [e for e in failed if e.status != PEER_LOST_STATUS]
    return (own or failed or [None])[0]


def job_failure(exits: list[RankExit], launcher: str = "Horovod") -> JobFailed | None:
    """The one-line failure of a job whose ranks exited as `exits`; None if none failed."""
    culprit = first_failure(exits)
    if culprit is None:
        return None
    bystanders = sorted(e.rank for e in exits if e.status == PEER_LOST_STATUS and e.rank != culprit.rank)
    if bystanders:
        names = ", ".join(map(str, bystanders))
        consequence = f"; rank{'s' if len(bystanders) > 1 else ''} {names} stopped because of it"
    else:
        consequence = f" and {launcher} stopped the others"
    if culprit.status == USER_ERROR_STATUS:
        return JobFailed(f"training rank {culprit.rank} stopped on an error (its 'error:' line above says which){consequence}", retryable=False)
    if culprit.status == SILENT_STATUS:
        return JobFailed(
            f"training rank {culprit.rank} on host {culprit.host} stopped answering (the host is lost or unreachable){consequence}: "
            f"see the cluster manager's view of {culprit.host}",
            lost_host=culprit.host,
        )
    if culprit.status == PEER_LOST_STATUS:
        return JobFailed(f"training rank {culprit.rank} lost contact with the other ranks and {launcher} stopped the job: see the rank logs above")
    return JobFailed(f"training rank {culprit.rank} exited with {describe_status(culprit.status)}{consequence}: see rank {culprit.rank}'s log above")


def job_failed(exits: list[RankExit], launcher: str, otherwise: str) -> JobFailed:
    """What a launcher raises when its ranks failed: `job_failure`, or, when no exit
    says which rank failed, `otherwise` (the launcher's own account)."""
    return job_failure(exits, launcher) or JobFailed(otherwise)

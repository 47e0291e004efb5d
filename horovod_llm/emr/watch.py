"""Following a cluster or its steps until they settle, and the status report.

The loops take the AWS calls, the clock and `sleep` as arguments, so tests drive them
through any sequence of states without an AWS account or real waiting.
"""

from __future__ import annotations

from collections.abc import Callable

from horovod_llm.errors import JobFailed

CLUSTER_READY = ("WAITING", "RUNNING")
CLUSTER_ENDED = ("TERMINATING", "TERMINATED", "TERMINATED_WITH_ERRORS")
STEP_ENDED = ("COMPLETED", "CANCELLED", "FAILED", "INTERRUPTED")


def _elapsed(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes:3d}m{seconds:02d}s"


def _reason(status: dict) -> str:
    message = (status.get("StateChangeReason") or {}).get("Message", "")
    return f" ({message})" if message else ""


def wait_for_cluster(
    describe: Callable[[], dict],
    report: Callable[[str], None],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    poll_s: float = 30.0,
) -> dict:
    """Poll until the cluster can take steps; JobFailed if it ends first."""
    started, last = clock(), None
    while True:
        cluster = describe()
        status = cluster["Status"]
        if status["State"] != last:
            last = status["State"]
            report(f"[{_elapsed(clock() - started)}] cluster {cluster['Id']}: {last}{_reason(status)}")
        if last in CLUSTER_READY:
            return cluster
        if last in CLUSTER_ENDED:
            raise JobFailed(
                f"cluster {cluster['Id']} ended while starting: {last}{_reason(status)}; the bootstrap action's log is under "
                f"<log_uri>/{cluster['Id']}/node/<instance>/bootstrap-actions/1/ (docs/emr.md, troubleshooting)"
            )
        sleep(poll_s)


def failure_text(step: dict) -> str:
    details = step["Status"].get("FailureDetails") or {}
    text = ": ".join(part for part in (details.get("Reason"), details.get("Message")) if part)
    if details.get("LogFile"):
        text += f" (log: {details['LogFile']})"
    return text or "no details from EMR"


def wait_for_steps(
    list_steps: Callable[[], list[dict]],
    step_ids: list[str],
    report: Callable[[str], None],
    sleep: Callable[[float], None],
    clock: Callable[[], float],
    poll_s: float = 30.0,
) -> list[dict]:
    """Poll until every step in step_ids has ended; JobFailed naming the first that did not complete."""
    started, last = clock(), {}
    while True:
        steps = {s["Id"]: s for s in list_steps() if s["Id"] in step_ids}
        for step_id in step_ids:
            state = steps[step_id]["Status"]["State"] if step_id in steps else "UNKNOWN"
            if last.get(step_id) != state:
                last[step_id] = state
                report(f"[{_elapsed(clock() - started)}] step {step_id} {steps.get(step_id, {}).get('Name', '')}: {state}")
        if all(state in STEP_ENDED for state in last.values()):
            break
        sleep(poll_s)
    ordered = [steps[step_id] for step_id in step_ids]
    for step in ordered:
        if step["Status"]["State"] != "COMPLETED":
            raise JobFailed(f"step {step['Id']} '{step['Name']}' {step['Status']['State']}: {failure_text(step)}")
    return ordered


def format_status(cluster: dict, steps: list[dict]) -> str:
    """The cluster's state, where to reach it, and its steps, oldest first."""
    status = cluster["Status"]
    lines = [f"cluster {cluster['Id']} '{cluster.get('Name', '')}': {status['State']}{_reason(status)}"]
    if cluster.get("MasterPublicDnsName"):
        lines.append(f"  primary node: {cluster['MasterPublicDnsName']}")
    if cluster.get("ReleaseLabel"):
        lines.append(f"  release: {cluster['ReleaseLabel']}")
    if not steps:
        lines.append("  no steps yet: horovod-llm emr submit --cluster-id " + cluster["Id"])
    for step in steps:
        line = f"  {step['Id']}  {step['Name']:<24} {step['Status']['State']}"
        if step["Status"]["State"] in ("FAILED", "CANCELLED", "INTERRUPTED"):
            line += f"  {failure_text(step)}"
        lines.append(line)
    return "\n".join(lines)

"""Following clusters and steps through scripted states: no AWS, no real waiting."""

import pytest

from horovod_llm.emr.watch import format_status, wait_for_cluster, wait_for_steps
from horovod_llm.errors import JobFailed


class Script:
    """Returns the scripted responses in turn; the fake clock advances 30 s per sleep."""

    def __init__(self, responses):
        self.responses = list(responses)
        self.now = 0.0
        self.sleeps = 0
        self.reports = []

    def next(self):
        return self.responses.pop(0)

    def sleep(self, seconds):
        self.sleeps += 1
        self.now += seconds

    def clock(self):
        return self.now


def cluster(state, message=""):
    status = {"State": state, "StateChangeReason": {"Message": message} if message else {}}
    return {"Id": "j-1", "Name": "horovod-llm", "Status": status}


def step(step_id, name, state, failure=None):
    status = {"State": state}
    if failure:
        status["FailureDetails"] = failure
    return {"Id": step_id, "Name": name, "Status": status}


def test_cluster_wait_reports_each_state_once_and_returns_when_ready():
    script = Script([cluster("STARTING"), cluster("STARTING"), cluster("BOOTSTRAPPING", "Running bootstrap actions"), cluster("WAITING")])
    result = wait_for_cluster(script.next, script.reports.append, script.sleep, script.clock)
    assert result["Status"]["State"] == "WAITING" and script.sleeps == 3
    assert script.reports == [
        "[  0m00s] cluster j-1: STARTING",
        "[  1m00s] cluster j-1: BOOTSTRAPPING (Running bootstrap actions)",
        "[  1m30s] cluster j-1: WAITING",
    ]


def test_cluster_that_ends_while_starting_fails_with_the_reason():
    script = Script([cluster("BOOTSTRAPPING"), cluster("TERMINATED_WITH_ERRORS", "On the master instance, bootstrap action 1 returned a non-zero return code")])
    with pytest.raises(
        JobFailed, match=r"TERMINATED_WITH_ERRORS \(On the master instance, bootstrap action 1 returned a non-zero return code\).*bootstrap-actions/1/"
    ):
        wait_for_cluster(script.next, script.reports.append, script.sleep, script.clock)


def test_steps_wait_follows_every_step_until_all_end():
    ids = ["s-1", "s-2"]
    script = Script(
        [
            [step("s-2", "horovod-llm train", "PENDING"), step("s-1", "horovod-llm preprocess", "RUNNING"), step("s-0", "other", "COMPLETED")],
            [step("s-2", "horovod-llm train", "RUNNING"), step("s-1", "horovod-llm preprocess", "COMPLETED")],
            [step("s-2", "horovod-llm train", "COMPLETED"), step("s-1", "horovod-llm preprocess", "COMPLETED")],
        ]
    )
    done = wait_for_steps(script.next, ids, script.reports.append, script.sleep, script.clock)
    assert [s["Id"] for s in done] == ids and script.sleeps == 2
    assert script.reports == [
        "[  0m00s] step s-1 horovod-llm preprocess: RUNNING",
        "[  0m00s] step s-2 horovod-llm train: PENDING",
        "[  0m30s] step s-1 horovod-llm preprocess: COMPLETED",
        "[  0m30s] step s-2 horovod-llm train: RUNNING",
        "[  1m00s] step s-2 horovod-llm train: COMPLETED",
    ]


def test_a_failed_step_fails_the_wait_with_emrs_details():
    failure = {"Reason": "Unknown Error.", "Message": "Exception in thread main", "LogFile": "s3://bkt/logs/j-1/steps/s-2/stderr.gz"}
    script = Script([[step("s-3", "horovod-llm generate", "CANCELLED"), step("s-2", "horovod-llm train", "FAILED", failure)]])
    with pytest.raises(JobFailed) as info:
        wait_for_steps(script.next, ["s-2", "s-3"], script.reports.append, script.sleep, script.clock)
    assert str(info.value) == "step s-2 'horovod-llm train' FAILED: Unknown Error.: Exception in thread main (log: s3://bkt/logs/j-1/steps/s-2/stderr.gz)"


def test_status_report():
    c = {**cluster("WAITING", "Cluster ready to run steps."), "MasterPublicDnsName": "ec2-1-2-3-4.compute-1.amazonaws.com", "ReleaseLabel": "emr-7.5.0"}
    steps = [step("s-1", "horovod-llm preprocess", "COMPLETED"), step("s-2", "horovod-llm train", "FAILED", {"Reason": "boom"})]
    assert format_status(c, steps) == (
        "cluster j-1 'horovod-llm': WAITING (Cluster ready to run steps.)\n"
        "  primary node: ec2-1-2-3-4.compute-1.amazonaws.com\n"
        "  release: emr-7.5.0\n"
        "  s-1  horovod-llm preprocess   COMPLETED\n"
        "  s-2  horovod-llm train        FAILED  boom"
    )
    assert format_status(cluster("STARTING"), []).endswith("no steps yet: horovod-llm emr submit --cluster-id j-1")

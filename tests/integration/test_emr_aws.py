"""`horovod-llm emr` against moto's EMR, S3, IAM, EC2 and Service Quotas APIs, served
over HTTP on loopback.

The CLI runs in this process with fake credentials and AWS_ENDPOINT_URL pointing at the
server; the tests read back what EMR and S3 hold with boto3.

moto's Service Quotas knows only VPC quotas: GetServiceQuota for EC2's vCPU quotas
answers NoSuchResource, so here `emr up` always takes its "not available" branch; the
quota arithmetic is tested by hand in tests/unit/test_emr_preflight.py.
"""

import contextlib
import gzip
import io
import json
import logging
import re
import tarfile
import uuid
import zipfile

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from horovod_llm.cli import main
from horovod_llm.config import CONFIG_DIR, load_config, to_yaml
from horovod_llm.emr import requests as rq
from horovod_llm.emr.release import describe_release, source_root
from horovod_llm.errors import UserError

EMR_YAML = str(CONFIG_DIR / "emr.yaml")
REGION = "us-east-1"


@pytest.fixture(scope="module")
def endpoint():
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def fake_credentials(monkeypatch, tmp_path):
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL_EMR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


def create_default_roles():
    """What 'aws emr create-default-roles' makes, as far as `emr up` checks it (IAM is
    account-wide, so every test of the module server shares them)."""
    iam = boto3.client("iam", region_name=REGION)
    for name in ("EMR_DefaultRole", "EMR_EC2_DefaultRole"):
        with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
            iam.create_role(RoleName=name, AssumeRolePolicyDocument="{}")
    with contextlib.suppress(iam.exceptions.EntityAlreadyExistsException):
        iam.create_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole")
    if not iam.get_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole")["InstanceProfile"]["Roles"]:
        iam.add_role_to_instance_profile(InstanceProfileName="EMR_EC2_DefaultRole", RoleName="EMR_EC2_DefaultRole")


@pytest.fixture
def aws(endpoint, monkeypatch, tmp_path):
    """(emr, s3, bucket): clients of the moto server and a fresh bucket for this test."""
    fake_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    create_default_roles()
    s3 = boto3.client("s3", region_name=REGION)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    return boto3.client("emr", region_name=REGION), s3, bucket


def emr(capsys, *args):
    """Run `horovod-llm emr ...` here; (exit status, stdout, stderr)."""
    capsys.readouterr()
    status = main(["emr", *args])
    out, err = capsys.readouterr()
    return status, out, err


def s3_url(bucket):
    return f"emr.s3_url=s3://{bucket}/proj"


def release():
    release_id, version = describe_release(source_root())
    return release_id, version


def object_bytes(s3, url):
    bucket, key = rq.split_s3(url)
    return s3.get_object(Bucket=bucket, Key=key)["Body"].read()


def start_cluster(emr_client, bucket, release_id, version="0.1.0", *overrides):
    """A cluster as `emr up` starts it, without building or uploading anything."""
    config = load_config(EMR_YAML, [s3_url(bucket), *overrides])
    request = rq.run_job_flow_request(config, rq.release_urls(config.emr.s3_url, release_id, version))
    return emr_client.run_job_flow(**request)["JobFlowId"]


def test_up_starts_a_cluster_that_carries_the_bootstrap_and_the_configurations(aws, capsys):
    emr_client, s3, bucket = aws
    status, out, err = emr(capsys, "up", "--wait", "--config", EMR_YAML, s3_url(bucket), "emr.subnet_id=subnet-0a1b", "emr.core_instance_count=3")
    assert status == 0, err
    cluster_id = out.strip()
    assert cluster_id.startswith("j-") and "\n" not in cluster_id
    assert f"cluster {cluster_id}: WAITING" in err
    # The prechecks ran (moto has no EC2 quotas: that one is skipped, saying so).
    assert "EC2 quota L-1216C47A is not available from Service Quotas in us-east-1: not checked" in err
    assert "prechecks done" in err and "access denied" not in err

    release_id, version = release()
    prefix = f"s3://{bucket}/proj/artifacts/{release_id}"
    cluster = emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]
    python = "/opt/horovod-llm/venv/bin/python"
    assert cluster["Configurations"] == [
        {
            "Classification": "spark-env",
            "Properties": {},
            "Configurations": [{"Classification": "export", "Properties": {"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}}],
        },
        {"Classification": "spark-defaults", "Properties": {"spark.pyspark.python": python, "spark.pyspark.driver.python": python}},
    ]
    assert cluster["ReleaseLabel"] == "emr-7.5.0" and cluster["LogUri"] == f"s3://{bucket}/proj/logs/"
    assert {a["Name"] for a in cluster["Applications"]} == {"Hadoop", "Spark"}
    assert cluster["Ec2InstanceAttributes"]["Ec2SubnetId"] == "subnet-0a1b"
    assert cluster["StepConcurrencyLevel"] == 1 and cluster["EbsRootVolumeSize"] == 32
    assert cluster["Tags"] == [{"Key": "project", "Value": "horovod-llm"}]

    (action,) = emr_client.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert action["Name"] == "horovod-llm stack"
    assert action["ScriptPath"] == f"{prefix}/bootstrap.sh"
    assert action["Args"] == [
        "--stack", f"{prefix}/stack.tar.gz",
        "--package", f"{prefix}/horovod_llm-{version}-py3-none-any.whl",
        "--venv", "/opt/horovod-llm/venv",
        "--torch-index-url", "https://download.pytorch.org/whl/cpu",
    ]  # fmt: skip
    groups = {g["InstanceGroupType"]: g for g in emr_client.list_instance_groups(ClusterId=cluster_id)["InstanceGroups"]}
    assert (groups["MASTER"]["InstanceType"], groups["MASTER"]["RequestedInstanceCount"]) == ("m5.xlarge", 1)
    assert (groups["CORE"]["InstanceType"], groups["CORE"]["RequestedInstanceCount"]) == ("m5.2xlarge", 3)

    # What the bootstrap action names exists in S3, byte for byte what the checkout holds.
    root = source_root()
    for url in (action["ScriptPath"], *action["Args"][1:4:2], f"{prefix}/entry.py"):
        bucket_name, key = rq.split_s3(url)
        assert s3.head_object(Bucket=bucket_name, Key=key)["ContentLength"] > 0
    assert object_bytes(s3, f"{prefix}/bootstrap.sh") == (root / "emr/bootstrap.sh").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(object_bytes(s3, f"{prefix}/stack.tar.gz")), mode="r:gz") as tar:
        assert tar.extractfile("scripts/install-stack.sh").read() == (root / "scripts/install-stack.sh").read_bytes()
        assert tar.extractfile("constraints.txt").read() == (root / "constraints.txt").read_bytes()
    with zipfile.ZipFile(io.BytesIO(object_bytes(s3, f"{prefix}/horovod_llm-{version}-py3-none-any.whl"))) as wheel:
        assert wheel.read("horovod_llm/__main__.py") == (root / "horovod_llm/__main__.py").read_bytes() == object_bytes(s3, f"{prefix}/entry.py")
        assert f"horovod_llm-{version}.dist-info/METADATA" in wheel.namelist()


def test_dry_run_prints_the_requests_that_up_sends(aws, capsys):
    emr_client, _, bucket = aws
    status, out, err = emr(capsys, "up", "--dry-run", s3_url(bucket))
    assert status == 0, err
    plan = json.loads(out)
    (run_job_flow,) = [r["params"] for r in plan["requests"] if r["operation"] == "RunJobFlow"]
    cluster_id = emr_client.run_job_flow(**run_job_flow)["JobFlowId"]  # the printed request is a valid one
    (action,) = emr_client.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert action["ScriptPath"] == run_job_flow["BootstrapActions"][0]["ScriptBootstrapAction"]["Path"]
    assert action["Args"] == run_job_flow["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]


def test_submit_adds_the_steps_in_order_after_uploading_what_they_run(aws, capsys, tmp_path):
    emr_client, s3, bucket = aws
    release_id, version = release()
    cluster_id = start_cluster(emr_client, bucket, release_id, version)
    overrides = [s3_url(bucket), "train.max_steps=50", "generate.prompt=Where is"]
    status, out, err = emr(capsys, "submit", "--cluster-id", cluster_id, *overrides)
    assert status == 0, err

    steps = emr_client.list_steps(ClusterId=cluster_id)["Steps"][::-1]  # EMR lists newest first
    assert [s["Name"] for s in steps] == ["horovod-llm preprocess", "horovod-llm train", "horovod-llm generate"]
    assert out.splitlines() == [f"{s['Id']}\t{s['Name']}" for s in steps]
    assert {s["ActionOnFailure"] for s in steps} == {"CANCEL_AND_WAIT"}
    assert {s["Config"]["Jar"] for s in steps} == {"command-runner.jar"}

    prefix = f"s3://{bucket}/proj/artifacts/{release_id}"
    config = load_config(EMR_YAML, overrides)
    config_url = f"{prefix}/configs/{rq.config_name(to_yaml(config))}"
    preprocess, train, generate = (s["Config"]["Args"] for s in steps)
    assert preprocess == [
        "spark-submit", "--deploy-mode", "cluster", "--master", "yarn", "--name", "horovod-llm-preprocess",
        "--driver-memory", "4g", "--conf", "spark.driver.memoryOverhead=2g",
        "--files", config_url, f"{prefix}/entry.py", "preprocess", "--config", config_url.rsplit("/", 1)[1],
    ]  # fmt: skip
    assert train[:3] == ["spark-submit", "--deploy-mode", "cluster"] and train[-3:] == ["train", "--config", config_url.rsplit("/", 1)[1]]
    confs = [train[i + 1] for i, word in enumerate(train) if word == "--conf"]
    assert {
        "spark.driver.memoryOverhead=2g",
        "spark.dynamicAllocation.enabled=false",
        "spark.yarn.heterogeneousExecutors.enabled=false",
        "spark.task.cpus=4",
        "spark.task.maxFailures=1",
        "spark.yarn.maxAppAttempts=1",
    } <= set(confs)
    assert generate[generate.index("--checkpoint") + 1] == f"s3://{bucket}/proj/runs/shakespeare"
    assert generate[generate.index("--prompt") + 1] == "Where is"

    # The uploaded config is the resolved one: loaded on the cluster with no overrides,
    # it is the config these overrides made here.
    uploaded = load_config_text(object_bytes(s3, config_url).decode(), tmp_path)
    assert uploaded == config and uploaded.train.max_steps == 50
    bucket_name, key = rq.split_s3(f"{prefix}/entry.py")
    assert s3.head_object(Bucket=bucket_name, Key=key)["ContentLength"] > 0

    status, out, err = emr(capsys, "status", "--cluster-id", cluster_id, s3_url(bucket))
    assert status == 0, err
    assert [line.split()[1:3] for line in out.splitlines()[-3:]] == [["horovod-llm", "preprocess"], ["horovod-llm", "train"], ["horovod-llm", "generate"]]

    # Only the stages asked for, still in pipeline order.
    status, out, err = emr(capsys, "submit", "--cluster-id", cluster_id, "--steps", "generate,train", *overrides)
    assert status == 0, err
    assert [line.split("\t")[1] for line in out.splitlines()] == ["horovod-llm train", "horovod-llm generate"]


@pytest.fixture
def steps_succeed(monkeypatch):
    """moto's EMR runs no step (a step stays RUNNING or PENDING for ever): here each step
    is COMPLETED as it is added, as EMR reports steps that succeeded, so that
    `submit --wait` ends."""
    from moto.emr import models

    add_steps = models.Cluster.add_steps

    def completed(self, steps):
        added = add_steps(self, steps)
        for step in added:
            step.state = "COMPLETED"
        return added

    monkeypatch.setattr(models.Cluster, "add_steps", completed)


def test_torch_distributor_clusters_bootstrap_without_horovod_and_train_with_it(aws, steps_succeed, capsys):
    # docs/emr.md's "Horovod or TorchDistributor" commands, as written there.
    emr_client, _, bucket = aws
    launcher = "train.launcher=torch_distributor"
    status, out, err = emr(capsys, "up", "--wait", s3_url(bucket), launcher)
    assert status == 0, err
    cluster_id = out.strip()
    (action,) = emr_client.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]
    assert action["Args"][-1] == "--without-horovod" and "--horovod-wheel" not in action["Args"]

    status, out, err = emr(capsys, "submit", "--cluster-id", cluster_id, "--wait", s3_url(bucket), launcher)
    assert status == 0, err
    steps = emr_client.list_steps(ClusterId=cluster_id)["Steps"][::-1]
    assert [s["Name"] for s in steps] == ["horovod-llm preprocess", "horovod-llm train", "horovod-llm generate"]
    release_id, _ = release()
    train = steps[1]["Config"]["Args"]
    uploaded = object_bytes(s3_client(), f"s3://{bucket}/proj/artifacts/{release_id}/configs/{train[-1]}").decode()
    assert "launcher: torch_distributor" in uploaded

    # Horovod's launcher on that cluster is refused before any step is added.
    status, _, err = emr(capsys, "submit", "--cluster-id", cluster_id, s3_url(bucket))
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        f"error: cluster {cluster_id} was started without Horovod (emr up with train.launcher=torch_distributor), "
        "and train.launcher=spark needs it: pass train.launcher=torch_distributor, or start a cluster with 'horovod-llm emr up' without it"
    )
    assert len(emr_client.list_steps(ClusterId=cluster_id)["Steps"]) == 3


@pytest.mark.parametrize("command", ["up", "submit"])
def test_dry_runs_take_the_torch_distributor_launcher(command, aws, capsys):
    _, _, bucket = aws
    args = [command, "--dry-run", s3_url(bucket), "train.launcher=torch_distributor"]
    status, out, err = emr(capsys, *(args if command == "up" else [*args[:2], "--cluster-id", "j-1", *args[2:]]))
    assert status == 0, err
    plan = json.loads(out)
    if command == "up":
        (run_job_flow,) = [r["params"] for r in plan["requests"] if r["operation"] == "RunJobFlow"]
        assert run_job_flow["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"][-1] == "--without-horovod"
    else:
        (config_yaml,) = plan["files"].values()
        assert "launcher: torch_distributor" in config_yaml


def s3_client():
    return boto3.client("s3", region_name=REGION)


def test_submit_refuses_a_cluster_that_installed_another_release(aws, capsys):
    emr_client, _, bucket = aws
    cluster_id = start_cluster(emr_client, bucket, "aaaaaaaaaaaa")
    status, _, err = emr(capsys, "submit", "--cluster-id", cluster_id, s3_url(bucket))
    assert status == 2
    assert err.strip().splitlines()[-1].startswith(f"error: cluster {cluster_id} installed horovod-llm release aaaaaaaaaaaa but this checkout is release ")
    assert emr_client.list_steps(ClusterId=cluster_id)["Steps"] == []

    # --ignore-release runs the cluster's own release (its entry script) with this config.
    status, _, err = emr(capsys, "submit", "--cluster-id", cluster_id, "--ignore-release", "--steps", "generate", s3_url(bucket))
    assert status == 0, err
    (step,) = emr_client.list_steps(ClusterId=cluster_id)["Steps"]
    assert f"s3://{bucket}/proj/artifacts/aaaaaaaaaaaa/entry.py" in step["Config"]["Args"]


def test_submit_refuses_clusters_it_did_not_start_and_terminated_ones(aws, capsys):
    emr_client, _, bucket = aws
    foreign = emr_client.run_job_flow(
        Name="other", ReleaseLabel="emr-7.5.0", JobFlowRole="EMR_EC2_DefaultRole", ServiceRole="EMR_DefaultRole",
        Instances={"MasterInstanceType": "m5.xlarge", "InstanceCount": 1, "KeepJobFlowAliveWhenNoSteps": True},
    )["JobFlowId"]  # fmt: skip
    status, _, err = emr(capsys, "submit", "--cluster-id", foreign, s3_url(bucket))
    assert status == 2 and "has no horovod-llm bootstrap action" in err

    cluster_id = start_cluster(emr_client, bucket, release()[0])
    status, out, err = emr(capsys, "down", "--cluster-id", cluster_id, s3_url(bucket))
    assert status == 0, err
    assert emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"] == "TERMINATED"
    status, _, err = emr(capsys, "submit", "--cluster-id", cluster_id, s3_url(bucket))
    assert status == 2 and f"cluster {cluster_id} is TERMINATED: start a new one with 'horovod-llm emr up'" in err


def put_log(s3, url, text):
    bucket, key = rq.split_s3(url)
    s3.put_object(Bucket=bucket, Key=key, Body=gzip.compress(text.encode()))


def test_logs_print_a_steps_output_and_its_drivers(aws, capsys):
    emr_client, s3, bucket = aws
    cluster_id = start_cluster(emr_client, bucket, release()[0])
    status, out, err = emr(capsys, "submit", "--cluster-id", cluster_id, s3_url(bucket))
    assert status == 0, err
    ids = dict(line.split("\t")[::-1] for line in out.splitlines())
    logs = f"s3://{bucket}/proj/logs/{cluster_id}"

    status, _, err = emr(capsys, "logs", "--cluster-id", cluster_id, "--step", "generate", s3_url(bucket))
    assert status == 2 and "EMR copies logs to S3 about every 5 minutes" in err

    put_log(s3, f"{logs}/steps/{ids['horovod-llm generate']}/stdout.gz", "ROMEO:\nWhat light through yonder window breaks\n")
    put_log(s3, f"{logs}/steps/{ids['horovod-llm generate']}/stderr.gz", "spark-submit chatter\n")
    status, out, err = emr(capsys, "logs", "--cluster-id", cluster_id, "--step", "generate", "--stream", "stdout", s3_url(bucket))
    assert status == 0, err
    assert out == "ROMEO:\nWhat light through yonder window breaks\n"
    assert f"==> {logs}/steps/{ids['horovod-llm generate']}/stdout.gz <==" in err

    train = ids["horovod-llm train"]
    put_log(s3, f"{logs}/steps/{train}/stderr.gz", "INFO Client: Submitted application application_1732_0002\nINFO Client: final status: FAILED\n")
    app = f"{logs}/containers/application_1732_0002"
    put_log(s3, f"{app}/container_1732_0002_01_000001/stderr.gz", "Traceback: rank 1 exited\n")
    put_log(s3, f"{app}/container_1732_0002_01_000002/stderr.gz", "executor noise\n")
    status, out, err = emr(capsys, "logs", "--cluster-id", cluster_id, "--step", train, "--driver", "--stream", "stderr", s3_url(bucket))
    assert status == 0, err
    assert out == "Traceback: rank 1 exited\n"


def test_a_missing_bucket_is_one_line_with_the_fix(aws, capsys):
    _, _, bucket = aws
    status, _, err = emr(capsys, "up", f"emr.s3_url=s3://{bucket}-missing/proj")
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        f"error: cannot start the cluster: bucket {bucket}-missing does not exist: create it with 'aws s3 mb s3://{bucket}-missing --region us-east-1'"
    )


def test_up_checks_the_account_before_it_creates_anything(aws, capsys):
    emr_client, s3, _ = aws
    # A bucket in another region, roles nobody created, a misspelt instance type, a
    # log bucket that does not exist: every problem in one line, and nothing created.
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    clusters_before = emr_client.list_clusters()["Clusters"]
    status, out, err = emr(
        capsys, "up", s3_url(bucket), f"emr.log_uri=s3://{bucket}-logs/emr/",
        "emr.service_role=Missing_ServiceRole", "emr.instance_profile=Missing_Profile", "emr.core_instance_type=m5.2xlage",
    )  # fmt: skip
    assert status == 2 and out == ""
    last = err.strip().splitlines()[-1]
    assert last == (
        "error: cannot start the cluster: "
        f"bucket {bucket} is in eu-west-1 but emr.region is us-east-1: set emr.region=eu-west-1, or use a bucket in us-east-1; "
        f"bucket {bucket}-logs does not exist: create it with 'aws s3 mb s3://{bucket}-logs --region us-east-1'; "
        "emr.service_role Missing_ServiceRole does not exist: create EMR's default roles with 'aws emr create-default-roles'; "
        "emr.instance_profile Missing_Profile does not exist: create EMR's default roles with 'aws emr create-default-roles'; "
        "emr.core_instance_type (m5.2xlage) is not an instance type EC2 offers in us-east-1: check its spelling and region"
    )
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert emr_client.list_clusters()["Clusters"] == clusters_before


def test_an_instance_profile_without_a_role_is_refused(aws, capsys):
    _, s3, bucket = aws
    iam = boto3.client("iam", region_name=REGION)
    profile = f"empty-{uuid.uuid4().hex[:8]}"
    iam.create_instance_profile(InstanceProfileName=profile)
    status, _, err = emr(capsys, "up", s3_url(bucket), f"emr.instance_profile={profile}")
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        f"error: cannot start the cluster: instance profile {profile} holds no role, so the nodes could not reach S3: add one with "
        f"'aws iam add-role-to-instance-profile --instance-profile-name {profile} --role-name EMR_EC2_DefaultRole'"
    )
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0


def test_a_family_with_its_own_quota_is_not_counted_against_the_standard_one(aws, capsys):
    _, _, bucket = aws
    status, _, err = emr(capsys, "up", s3_url(bucket), "emr.core_instance_type=g4dn.2xlarge")
    assert status == 0, err
    assert "g4dn.2xlarge counts against an EC2 quota of its own family, not checked here" in err
    assert "EC2 quota L-1216C47A is not available" in err  # the primary still counts


def test_spot_keeps_the_primary_on_demand_and_checks_both_quotas(aws, capsys):
    emr_client, _, bucket = aws
    status, out, err = emr(capsys, "up", s3_url(bucket), "emr.market=SPOT")
    assert status == 0, err
    groups = {g["InstanceGroupType"]: g for g in emr_client.list_instance_groups(ClusterId=out.strip())["InstanceGroups"]}
    assert (groups["MASTER"]["Market"], groups["CORE"]["Market"]) == ("ON_DEMAND", "SPOT")
    assert "EC2 quota L-1216C47A is not available" in err and "EC2 quota L-34B43A08 is not available" in err


def test_the_graviton_name_rule_agrees_with_ec2_on_every_instance_type(aws):
    # requests.is_graviton reads the family name; EC2 says each type's architectures.
    ec2 = boto3.client("ec2", region_name=REGION)
    types = [t for page in ec2.get_paginator("describe_instance_types").paginate() for t in page["InstanceTypes"]]
    assert len(types) > 500  # every type EC2 (moto's copy of its list) knows
    disagree = [t["InstanceType"] for t in types if rq.is_graviton(t["InstanceType"]) != ("arm64" in t["ProcessorInfo"]["SupportedArchitectures"])]
    assert disagree == []


def test_graviton_types_are_refused_in_one_line(aws, capsys):
    emr_client, s3, bucket = aws
    clusters_before = emr_client.list_clusters()["Clusters"]
    status, _, err = emr(capsys, "up", s3_url(bucket), "emr.core_instance_type=m6g.2xlarge")
    assert status == 2
    assert err.strip().splitlines()[-1] == (
        "error: cannot run on EMR: emr.core_instance_type (m6g.2xlarge) is a Graviton (arm64) type, "
        "and horovod 0.28.1 does not build on aarch64: pick an x86_64 type such as m5.2xlarge or m6i.2xlarge"
    )
    assert s3.list_objects_v2(Bucket=bucket)["KeyCount"] == 0
    assert emr_client.list_clusters()["Clusters"] == clusters_before


def test_dry_run_sends_nothing_and_prints_the_documented_json(monkeypatch, tmp_path, capsys):
    # No server and no credentials: a request would fail.
    fake_credentials(monkeypatch, tmp_path)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    release_id, version = release()
    prefix = f"s3://bkt/proj/artifacts/{release_id}"

    status, out, err = emr(capsys, "up", "--dry-run", "emr.s3_url=s3://bkt/proj")
    assert status == 0, err
    plan = json.loads(out)
    assert set(plan) == {"command", "release", "requests", "cli"}
    assert plan["command"] == "up" and plan["release"] == {"id": release_id, "version": version, "url": prefix}
    assert [(r["service"], r["operation"]) for r in plan["requests"]] == [("s3", "PutObject")] * 4 + [("emr", "RunJobFlow")]
    assert [r["params"]["Key"] for r in plan["requests"][:4]] == [
        f"proj/artifacts/{release_id}/{name}" for name in ("bootstrap.sh", "stack.tar.gz", f"horovod_llm-{version}-py3-none-any.whl", "entry.py")
    ]
    assert plan["cli"][-1].startswith("aws emr create-cluster ") and sum(c.startswith("aws s3 cp ") for c in plan["cli"]) == 4

    status, out, err = emr(capsys, "submit", "--dry-run", "--cluster-id", "j-DRYRUN", "emr.s3_url=s3://bkt/proj")
    assert status == 0, err
    plan = json.loads(out)
    assert set(plan) == {"command", "release", "requests", "cli", "files"}
    assert [r["operation"] for r in plan["requests"]] == ["PutObject"] * 5 + ["AddJobFlowSteps"]
    (name,) = plan["files"]
    assert plan["requests"][4]["params"]["Key"] == f"proj/artifacts/{release_id}/configs/{name}"
    assert load_config(EMR_YAML, ["emr.s3_url=s3://bkt/proj"]) == load_config_text(plan["files"][name], tmp_path)
    steps = plan["requests"][-1]["params"]
    assert steps["JobFlowId"] == "j-DRYRUN" and [s["Name"] for s in steps["Steps"]] == ["horovod-llm preprocess", "horovod-llm train", "horovod-llm generate"]
    assert plan["cli"][-1].startswith("aws emr add-steps --region us-east-1 --cluster-id j-DRYRUN --steps ")

    status, out, err = emr(capsys, "down", "--dry-run", "--cluster-id", "j-DRYRUN")
    assert status == 0, err
    assert json.loads(out) == {
        "command": "down",
        "requests": [{"service": "emr", "operation": "TerminateJobFlows", "params": {"JobFlowIds": ["j-DRYRUN"]}}],
        "cli": ["aws emr terminate-clusters --region us-east-1 --cluster-ids j-DRYRUN"],
    }


def load_config_text(text, tmp_path):
    path = tmp_path / "uploaded.yaml"
    path.write_text(text)
    return load_config(path)


# --- the documented IAM policy, under moto's IAM enforcement
#
# moto then checks each request's action against the caller's policies. It matches
# resources for S3 and for IAM calls that name an existing role; other calls it checks
# against "*", which a statement scoped to an ARN never matches: iam:GetInstanceProfile
# (scoped to the instance profile in docs/emr.md) is denied here though AWS allows it.
# It does not check iam:PassRole or conditions of calls EMR makes for the caller.

MOTO_DENIES_SCOPED = "checking instance profile EMR_EC2_DefaultRole"
PRECHECK_ACTIONS = {"iam:GetRole", "iam:GetInstanceProfile", "ec2:DescribeInstanceTypes", "servicequotas:GetServiceQuota", "s3:GetBucketLocation"}


def documented_policy(bucket, without=()):
    doc = (source_root() / "docs/emr.md").read_text()
    (block,) = [b for b in re.findall(r"```json\n(.*?)```", doc, re.DOTALL) if '"2012-10-17"' in b]
    policy = json.loads(block.replace("YOUR-BUCKET", bucket))
    for statement in policy["Statement"]:
        actions = [statement["Action"]] if isinstance(statement["Action"], str) else statement["Action"]
        statement["Action"] = [a for a in actions if a not in without]
    policy["Statement"] = [statement for statement in policy["Statement"] if statement["Action"]]
    return policy


def new_user(policy):
    """The access key of a new IAM user that holds only `policy`."""
    iam = boto3.client("iam", region_name=REGION)
    name = f"user-{uuid.uuid4().hex[:8]}"
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName="horovod-llm-emr", PolicyDocument=json.dumps(policy))
    return iam.create_access_key(UserName=name)["AccessKey"]


@contextlib.contextmanager
def acting_as(key, endpoint, monkeypatch):
    """Inside: requests carry the user's key and moto checks them against its policies."""
    with monkeypatch.context() as env:
        env.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        env.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        env.delenv("AWS_SESSION_TOKEN")
        previous = requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=10).json()["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"]
        try:
            yield
        finally:
            requests.post(f"{endpoint}/moto-api/reset-auth", data=previous.encode(), timeout=10)


def test_the_documented_policy_runs_every_emr_command(aws, endpoint, monkeypatch, capsys):
    emr_client, s3, bucket = aws
    key = new_user(documented_policy(bucket))
    with acting_as(key, endpoint, monkeypatch):
        status, out, err = emr(capsys, "up", s3_url(bucket))
        assert status == 0, err
        assert [line for line in err.splitlines() if "access denied" in line] == [line for line in err.splitlines() if MOTO_DENIES_SCOPED in line]
        cluster_id = out.strip()
        status, out, err = emr(capsys, "submit", "--cluster-id", cluster_id, s3_url(bucket))
        assert status == 0, err
        train = dict(line.split("\t")[::-1] for line in out.splitlines())["horovod-llm train"]
        status, out, err = emr(capsys, "status", "--cluster-id", cluster_id, s3_url(bucket))
        assert status == 0, err

    logs = f"s3://{bucket}/proj/logs/{cluster_id}"
    put_log(s3, f"{logs}/steps/{train}/stderr.gz", "INFO Client: Submitted application application_1732_0007\n")
    put_log(s3, f"{logs}/containers/application_1732_0007/container_1732_0007_01_000001/stderr.gz", "driver says hello\n")
    with acting_as(key, endpoint, monkeypatch):
        status, out, err = emr(capsys, "logs", "--cluster-id", cluster_id, "--step", "train", "--driver", "--stream", "stderr", s3_url(bucket))
        assert status == 0, err
        assert out == "driver says hello\n"
        status, _, err = emr(capsys, "down", "--cluster-id", cluster_id, s3_url(bucket))
        assert status == 0, err
    assert emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"] == "TERMINATED"


@pytest.mark.parametrize(
    ("without", "skipped"),
    [
        (
            PRECHECK_ACTIONS,
            [
                "checking bucket {bucket}",
                "checking IAM role EMR_DefaultRole",
                "checking instance profile EMR_EC2_DefaultRole",
                # the quota check needs the vCPUs, so it is skipped with this one
                "checking instance type m5.xlarge",
            ],
        ),
        # moto denies the instance profile's check whatever the policy (see above)
        ({"servicequotas:GetServiceQuota"}, ["checking instance profile EMR_EC2_DefaultRole", "reading EC2 quota L-1216C47A"]),
    ],
)
def test_a_denied_precheck_warns_and_the_cluster_still_starts(aws, endpoint, monkeypatch, capsys, without, skipped):
    emr_client, _, bucket = aws
    with acting_as(new_user(documented_policy(bucket, without=without)), endpoint, monkeypatch):
        status, out, err = emr(capsys, "up", s3_url(bucket))
    assert status == 0, err
    denied = [line.split(" horovod_llm.emr.client: ", 1)[1] for line in err.splitlines() if "access denied" in line]
    assert [line.split(": access denied, not checked (grant ")[0] for line in denied] == [check.format(bucket=bucket) for check in skipped]
    assert emr_client.describe_cluster(ClusterId=out.strip())["Cluster"]["Status"]["State"] in ("STARTING", "WAITING", "RUNNING")


def test_the_gpu_config_shows_every_gpu_setting_and_moto_accepts_it(aws, capsys):
    """configs/emr-gpu.yaml (docs/emr.md, GPU instances): a GPU core type, YARN GPU
    scheduling and isolation, Spark's discovery script, GPU amounts per executor and
    task, and the bootstrap's --gpu; --without-horovod (TorchDistributor) compiles nothing."""
    emr_client, _, bucket = aws
    gpu_yaml = str(CONFIG_DIR / "emr-gpu.yaml")
    status, out, err = emr(capsys, "up", "--dry-run", "--config", gpu_yaml, s3_url(bucket))
    assert status == 0, err
    (request,) = [r["params"] for r in json.loads(out)["requests"] if r["operation"] == "RunJobFlow"]
    assert request["Instances"]["InstanceGroups"][1]["InstanceType"] == "g5.2xlarge"
    classifications = {c["Classification"]: c for c in request["Configurations"]}
    yarn = classifications["yarn-site"]["Properties"]
    assert yarn["yarn.resource-types"] == yarn["yarn.nodemanager.resource-plugins"] == "yarn.io/gpu"
    assert yarn["yarn.nodemanager.container-executor.class"].endswith("LinuxContainerExecutor")
    executor = {c["Classification"]: c["Properties"] for c in classifications["container-executor"]["Configurations"]}
    assert executor["gpu"] == {"module.enabled": "true"} and executor["cgroups"]["root"] == yarn["yarn.nodemanager.linux-container-executor.cgroups.mount-path"]
    assert classifications["capacity-scheduler"]["Properties"]["yarn.scheduler.capacity.resource-calculator"].endswith("DominantResourceCalculator")
    assert classifications["spark-defaults"]["Properties"]["spark.executor.resource.gpu.discoveryScript"] == "/usr/lib/spark/scripts/gpu/getGpusResources.sh"
    args = request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]
    assert "--gpu" in args and "--without-horovod" not in args and args[args.index("--torch-index-url") + 1].endswith("/cu128")
    cluster_id = emr_client.run_job_flow(**request)["JobFlowId"]  # a request EMR's API takes
    assert emr_client.describe_cluster(ClusterId=cluster_id)["Cluster"]["Status"]["State"] in ("STARTING", "WAITING", "RUNNING")

    config = load_config(gpu_yaml, [s3_url(bucket)])
    train_conf = config.emr.train_conf
    assert (train_conf["spark.executor.resource.gpu.amount"], train_conf["spark.task.resource.gpu.amount"]) == ("1", "1")
    assert (config.train.device, config.train.num_proc) == ("cuda", 2)
    with pytest.raises(UserError, match=r"emr.train_conf gives 2 .*spark.executor.resource.gpu.amount 1 // spark.task.resource.gpu.amount 1 per executor"):
        load_config(gpu_yaml, [s3_url(bucket), "train.num_proc=3"])  # 8 cores // 8, and 1 GPU each: 2 slots

    status, out, err = emr(capsys, "up", "--dry-run", "--config", gpu_yaml, s3_url(bucket), "train.launcher=torch_distributor")
    assert status == 0, err
    (request,) = [r["params"] for r in json.loads(out)["requests"] if r["operation"] == "RunJobFlow"]
    args = request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]
    assert "--gpu" in args and "--without-horovod" in args

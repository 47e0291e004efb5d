"""EMR request building: the exact requests, written out by hand from the config."""

import json
import shlex

import pytest

from horovod_llm.config import CONFIG_DIR, load_config
from horovod_llm.emr import requests as rq
from horovod_llm.errors import UserError

EMR_YAML = CONFIG_DIR / "emr.yaml"
PY = "/opt/horovod-llm/venv/bin/python"
REL = "s3://bkt/proj/artifacts/0123456789ab"


def emr_config(*overrides):
    return load_config(EMR_YAML, ["emr.s3_url=s3://bkt/proj", *overrides])


@pytest.fixture
def urls():
    return rq.release_urls("s3://bkt/proj/", "0123456789ab", "0.1.0")


def test_release_urls(urls):
    assert urls == rq.ReleaseUrls(
        prefix=REL,
        bootstrap=f"{REL}/bootstrap.sh",
        stack=f"{REL}/stack.tar.gz",
        wheel=f"{REL}/horovod_llm-0.1.0-py3-none-any.whl",
        entry=f"{REL}/entry.py",
    )
    assert urls.config("config-abc.yaml") == f"{REL}/configs/config-abc.yaml"


def test_run_job_flow_request(urls):
    config = emr_config("emr.subnet_id=subnet-0a1b", "emr.key_name=my-key", "emr.horovod_wheel_url=s3://bkt/wheels/horovod-0.28.1-cp311-cp311-linux_x86_64.whl")
    assert rq.run_job_flow_request(config, urls) == {
        "Name": "horovod-llm",
        "LogUri": "s3://bkt/proj/logs/",
        "ReleaseLabel": "emr-7.5.0",
        "Applications": [{"Name": "Hadoop"}, {"Name": "Spark"}],
        "Instances": {
            "InstanceGroups": [
                {"Name": "primary", "InstanceRole": "MASTER", "Market": "ON_DEMAND", "InstanceType": "m5.xlarge", "InstanceCount": 1},
                {"Name": "core", "InstanceRole": "CORE", "Market": "ON_DEMAND", "InstanceType": "m5.2xlarge", "InstanceCount": 2},
            ],
            "KeepJobFlowAliveWhenNoSteps": True,
            "TerminationProtected": False,
            "Ec2SubnetId": "subnet-0a1b",
            "Ec2KeyName": "my-key",
        },
        "BootstrapActions": [
            {
                "Name": "horovod-llm stack",
                "ScriptBootstrapAction": {
                    "Path": f"{REL}/bootstrap.sh",
                    "Args": [
                        "--stack",
                        f"{REL}/stack.tar.gz",
                        "--package",
                        f"{REL}/horovod_llm-0.1.0-py3-none-any.whl",
                        "--venv",
                        "/opt/horovod-llm/venv",
                        "--torch-index-url",
                        "https://download.pytorch.org/whl/cpu",
                        "--horovod-wheel",
                        "s3://bkt/wheels/horovod-0.28.1-cp311-cp311-linux_x86_64.whl",
                    ],  # fmt: skip
                },
            }
        ],
        "Configurations": [
            {
                "Classification": "spark-env",
                "Properties": {},
                "Configurations": [{"Classification": "export", "Properties": {"PYSPARK_PYTHON": PY, "PYSPARK_DRIVER_PYTHON": PY}}],
            },
            {"Classification": "spark-defaults", "Properties": {"spark.pyspark.python": PY, "spark.pyspark.driver.python": PY}},
        ],
        "JobFlowRole": "EMR_EC2_DefaultRole",
        "ServiceRole": "EMR_DefaultRole",
        "EbsRootVolumeSize": 32,
        "StepConcurrencyLevel": 1,
        "AutoTerminationPolicy": {"IdleTimeout": 3600},
        "Tags": [{"Key": "project", "Value": "horovod-llm"}],
    }


def test_spot_market_is_capped_at_the_on_demand_price_and_no_idle_timeout(urls):
    request = rq.run_job_flow_request(emr_config("emr.market=SPOT", "emr.idle_timeout_s=0", "emr.log_uri=s3://logs-bucket/emr/"), urls)
    # Spot core nodes only: a reclaimed primary (a single instance) would end the cluster.
    assert [(g["InstanceRole"], g["Market"], g.get("BidPrice")) for g in request["Instances"]["InstanceGroups"]] == [
        ("MASTER", "ON_DEMAND", None),
        ("CORE", "SPOT", "OnDemandPrice"),
    ]
    assert "AutoTerminationPolicy" not in request
    assert request["LogUri"] == "s3://logs-bucket/emr/"
    assert "Ec2SubnetId" not in request["Instances"] and "Ec2KeyName" not in request["Instances"]


def test_the_venv_path_reaches_bootstrap_and_spark(urls):
    request = rq.run_job_flow_request(emr_config("emr.venv=/srv/venv"), urls)
    args = request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]
    assert args[args.index("--venv") + 1] == "/srv/venv"
    assert request["Configurations"][1]["Properties"]["spark.pyspark.python"] == "/srv/venv/bin/python"


def test_the_torch_distributor_launcher_bootstraps_nodes_without_horovod(urls):
    wheel = "emr.horovod_wheel_url=s3://bkt/wheels/horovod-0.28.1-cp311-cp311-linux_x86_64.whl"
    request = rq.run_job_flow_request(emr_config("train.launcher=torch_distributor", wheel), urls)
    args = request["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]
    assert "--without-horovod" in args and "--horovod-wheel" not in args  # no wheel to fetch, nothing to build
    horovod_args = rq.run_job_flow_request(emr_config(wheel), urls)["BootstrapActions"][0]["ScriptBootstrapAction"]["Args"]
    assert "--without-horovod" not in horovod_args and "--horovod-wheel" in horovod_args


def test_steps(urls):
    config = emr_config()
    conf_url = f"{REL}/configs/config-1.yaml"
    steps = [rq.step(config, stage, urls, conf_url) for stage in rq.STAGES]
    cluster_mode = ["spark-submit", "--deploy-mode", "cluster", "--master", "yarn"]
    assert steps[0] == {
        "Name": "horovod-llm preprocess",
        "ActionOnFailure": "CANCEL_AND_WAIT",
        "HadoopJarStep": {
            "Jar": "command-runner.jar",
            "Args": [*cluster_mode, "--name", "horovod-llm-preprocess", "--driver-memory", "4g", "--conf", "spark.driver.memoryOverhead=2g",
                     "--files", conf_url, f"{REL}/entry.py", "preprocess", "--config", "config-1.yaml"],
        },
    }  # fmt: skip
    assert steps[1]["HadoopJarStep"]["Args"] == [
        *cluster_mode, "--name", "horovod-llm-train", "--driver-memory", "4g", "--conf", "spark.driver.memoryOverhead=2g",
        "--conf", "spark.dynamicAllocation.enabled=false",
        "--conf", "spark.yarn.heterogeneousExecutors.enabled=false",
        "--conf", "spark.executor.instances=2",
        "--conf", "spark.executor.cores=8",
        "--conf", "spark.task.cpus=4",
        "--conf", "spark.executor.memory=4g",
        "--conf", "spark.executor.memoryOverhead=10g",
        "--conf", "spark.task.maxFailures=1",
        "--conf", "spark.yarn.maxAppAttempts=1",
        "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
        "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=600s",
        "--files", conf_url, f"{REL}/entry.py", "train", "--config", "config-1.yaml",
    ]  # fmt: skip
    # generate starts no SparkContext, which YARN cluster mode would fail: client mode.
    assert steps[2]["Name"] == "horovod-llm generate"
    assert steps[2]["HadoopJarStep"]["Args"] == [
        "spark-submit", "--deploy-mode", "client", "--master", "yarn", "--name", "horovod-llm-generate",
        f"{REL}/entry.py", "generate", "--checkpoint", "s3://bkt/proj/runs/shakespeare", "--prompt", "ROMEO:\n",
        "--max-new-tokens", "200", "--temperature", "0.8", "--top-k", "50", "--top-p", "1.0", "--seed", "42",
    ]  # fmt: skip
    assert rq.add_job_flow_steps_request("j-1", steps) == {"JobFlowId": "j-1", "Steps": steps}


def test_config_name_follows_the_content():
    assert rq.config_name("a: 1\n") == rq.config_name("a: 1\n") != rq.config_name("a: 2\n")
    assert rq.config_name("a: 1\n").startswith("config-") and rq.config_name("a: 1\n").endswith(".yaml")


def test_release_of_bootstrap():
    assert rq.release_of_bootstrap(f"{REL}/bootstrap.sh") == "0123456789ab"
    assert rq.release_of_bootstrap("s3://elasticmapreduce/bootstrap-actions/run-if") is None


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ([], "emr.s3_url (s3://CHANGE-ME/horovod-llm) names no valid S3 bucket"),
        (["emr.s3_url=s3://bkt/p", "output_url=runs/local"], "output_url (runs/local) must be an s3:// URL"),
        (["emr.s3_url=s3://bkt/p", "spark.master=local[2]"], "spark.master ('local[2]') must be 'yarn'"),
        (
            ["emr.s3_url=s3://bkt/p", "emr.master_instance_type=t4g.large"],
            "emr.master_instance_type (t4g.large) is a Graviton (arm64) type, and horovod 0.28.1 does not build on aarch64: "
            "pick an x86_64 type such as m5.2xlarge or m6i.2xlarge",
        ),
    ],
)
def test_launch_problems(overrides, fragment):
    with pytest.raises(UserError, match="cannot run on EMR") as info:
        rq.check_launchable(load_config(EMR_YAML, overrides))
    assert fragment in str(info.value)


def test_a_local_config_is_not_launchable_and_says_why():
    with pytest.raises(UserError) as info:
        rq.check_launchable(load_config(CONFIG_DIR / "local.yaml"))
    message = str(info.value)
    assert "emr.s3_url is empty" in message and "output_url" in message and "spark.master ('local[*]')" in message


def test_launchable_config_passes():
    rq.check_launchable(emr_config())


@pytest.mark.parametrize("instance_type", ["m6g.xlarge", "c7gn.large", "r6gd.2xlarge", "t4g.small", "im4gn.large", "x2gd.xlarge", "a1.large", "g5g.xlarge"])
def test_graviton_types(instance_type):
    assert rq.is_graviton(instance_type)
    with pytest.raises(UserError, match=rf"emr.core_instance_type \({instance_type}\) is a Graviton \(arm64\) type"):
        rq.check_launchable(emr_config(f"emr.core_instance_type={instance_type}"))


@pytest.mark.parametrize("instance_type", ["g4dn.xlarge", "g5.xlarge", "m5.xlarge", "m6i.xlarge", "m6a.xlarge", "c5n.large", "m7i-flex.large"])
def test_x86_types(instance_type):
    assert not rq.is_graviton(instance_type)
    rq.check_launchable(emr_config(f"emr.core_instance_type={instance_type}", f"emr.master_instance_type={instance_type}"))


def test_the_drivers_memory_overhead_reaches_the_cluster_mode_steps(urls):
    config = emr_config("emr.driver_memory_overhead=3072m")
    preprocess, train, generate = (rq.spark_submit_args(config, stage, urls, f"{REL}/configs/c.yaml") for stage in rq.STAGES)
    for args in (preprocess, train):
        at = args.index("--driver-memory")
        assert args[at : at + 4] == ["--driver-memory", "4g", "--conf", "spark.driver.memoryOverhead=3072m"]
    # generate's driver runs on the primary node, outside YARN.
    assert "--driver-memory" not in generate and not any("memoryOverhead" in word for word in generate)


def test_create_cluster_cli_says_what_the_request_says(urls):
    request = rq.run_job_flow_request(emr_config("emr.subnet_id=subnet-0a1b", "emr.market=SPOT"), urls)
    words = shlex.split(rq.create_cluster_cli(request, "eu-west-1"))
    assert words[:3] == ["aws", "emr", "create-cluster"]

    def value(flag):
        return words[words.index(flag) + 1]

    assert value("--region") == "eu-west-1" and value("--release-label") == "emr-7.5.0" and value("--log-uri") == "s3://bkt/proj/logs/"
    assert words[words.index("--applications") + 1 : words.index("--applications") + 3] == ["Name=Hadoop", "Name=Spark"]
    assert json.loads(value("--ec2-attributes")) == {"InstanceProfile": "EMR_EC2_DefaultRole", "SubnetId": "subnet-0a1b"}
    assert json.loads(value("--instance-groups")) == [
        {"Name": "primary", "InstanceGroupType": "MASTER", "InstanceType": "m5.xlarge", "InstanceCount": 1},
        {"Name": "core", "InstanceGroupType": "CORE", "InstanceType": "m5.2xlarge", "InstanceCount": 2, "BidPrice": "OnDemandPrice"},
    ]
    action = request["BootstrapActions"][0]
    assert json.loads(value("--bootstrap-actions")) == [
        {"Name": action["Name"], **{k.replace("Script", ""): v for k, v in action["ScriptBootstrapAction"].items()}}
    ]
    assert json.loads(value("--configurations")) == request["Configurations"]
    assert json.loads(value("--auto-termination-policy")) == {"IdleTimeout": 3600}
    assert value("--ebs-root-volume-size") == "32" and value("--step-concurrency-level") == "1" and value("--tags") == "project=horovod-llm"


def test_add_steps_cli_carries_the_exact_arguments(urls):
    config = emr_config()
    request = rq.add_job_flow_steps_request("j-ABC", [rq.step(config, s, urls, f"{REL}/configs/c.yaml") for s in rq.STAGES])
    words = shlex.split(rq.add_steps_cli(request, "us-east-1"))
    assert words[:3] == ["aws", "emr", "add-steps"] and words[words.index("--cluster-id") + 1] == "j-ABC"
    steps = json.loads(words[words.index("--steps") + 1])
    assert [s["Type"] for s in steps] == ["CUSTOM_JAR"] * 3
    assert [s["Args"] for s in steps] == [s["HadoopJarStep"]["Args"] for s in request["Steps"]]
    assert steps[2]["Args"][steps[2]["Args"].index("--prompt") + 1] == "ROMEO:\n"


def test_terminate_and_s3_cli():
    assert rq.terminate_cli(rq.terminate_request("j-1"), "us-east-1") == "aws emr terminate-clusters --region us-east-1 --cluster-ids j-1"
    assert rq.s3_cp_cli("a b.txt", "s3://bkt/k", "us-east-1") == "aws s3 cp 'a b.txt' s3://bkt/k --region us-east-1"
    assert rq.put_object("s3://bkt/a/b.whl", "dist/b.whl") == {
        "service": "s3",
        "operation": "PutObject",
        "params": {"Bucket": "bkt", "Key": "a/b.whl"},
        "source": "dist/b.whl",
    }


def test_where_emr_puts_logs():
    assert rq.step_log_url("s3://bkt/proj/logs/", "j-1", "s-2", "stderr") == "s3://bkt/proj/logs/j-1/steps/s-2/stderr.gz"
    assert rq.containers_prefix("s3://bkt/logs", "j-1", "application_17_0003") == "s3://bkt/logs/j-1/containers/application_17_0003/"
    stderr = "INFO Client: Submitting application application_1732_0003 to ResourceManager\nINFO Client: Application report for application_1732_0003 (state: RUNNING)\n"
    assert rq.application_id(stderr) == "application_1732_0003"
    assert rq.application_id("no application here") is None
    assert rq.step_stage("horovod-llm train") == "train" and rq.step_stage("Setup hadoop debugging") is None


def test_split_s3():
    assert rq.split_s3("s3://bkt/a/b") == ("bkt", "a/b") and rq.split_s3("s3a://bkt") == ("bkt", "")
    with pytest.raises(UserError):
        rq.split_s3("/local/path")

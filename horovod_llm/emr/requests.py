"""EMR and S3 requests built from the config: pure functions, no AWS calls.

Each request is the exact `params` dict boto3 sends (`run_job_flow(**params)`), and each
has its `aws` CLI equivalent for `--dry-run`. Where EMR puts logs is here too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
import shlex
from dataclasses import dataclass

from horovod_llm import launchers
from horovod_llm.config import EmrConfig, RunConfig
from horovod_llm.errors import UserError
from horovod_llm.inference.sampling import as_flags
from horovod_llm.redaction import is_secret_key

STAGES = ("preprocess", "train", "generate")
STEP_PREFIX = "horovod-llm "  # step names: "horovod-llm preprocess", ...
BOOTSTRAP_ACTION = "horovod-llm stack"
# S3's rules for bucket names (lower case, digits, dots, hyphens; 3 to 63 characters).
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_RELEASE_PATH = re.compile(r"/artifacts/([0-9a-f]{12})/bootstrap\.sh$")
_APPLICATION = re.compile(r"\bapplication_\d+_\d+\b")
# Graviton (arm64) families: a "g" right after the generation digit (m6g, c7gn, r6gd,
# t4g, im4gn, x2gd, g5g), and a1; g4dn, g5, m6i, m6a are x86_64. tests/integration/
# test_emr_aws.py holds the rule against the architectures EC2 gives for every type.
_GRAVITON = re.compile(r"^(a1|[a-z]+\d+g[a-z]*)\.", re.IGNORECASE)


def split_s3(url: str) -> tuple[str, str]:
    """s3://bucket/key -> (bucket, key); s3a:// is the same object."""
    match = re.match(r"^s3a?://([^/]+)/?(.*)$", url)
    if not match:
        raise UserError(f"'{url}' is not an s3:// URL")
    return match.group(1), match.group(2)


def launch_problems(config: RunConfig) -> list[str]:
    """What `emr up` and `emr submit` need beyond a valid config: a real bucket, S3 outputs."""
    e = config.emr
    problems = []
    if not e.s3_url:
        problems.append("emr.s3_url is empty: pass emr.s3_url=s3://YOUR-BUCKET/prefix (docs/emr.md)")
    elif not _BUCKET.match(split_s3(e.s3_url)[0]):
        problems.append(f"emr.s3_url ({e.s3_url}) names no valid S3 bucket: pass emr.s3_url=s3://YOUR-BUCKET/prefix (docs/emr.md)")
    if not config.output_url.startswith(("s3://", "s3a://")):
        problems.append(f"output_url ({config.output_url}) must be an s3:// URL on EMR: every node reads and writes it")
    if not launchers.launcher(config.train.launcher).on_spark_tasks:
        allowed = " or ".join(f"'{name}'" for name in launchers.on_spark_tasks())
        problems.append(f"train.launcher ('{config.train.launcher}') must be {allowed} on EMR: the ranks run as Spark tasks on the core nodes")
    if not config.spark.master.startswith("yarn"):
        problems.append(f"spark.master ('{config.spark.master}') must be 'yarn' on EMR")
    for key in ("master_instance_type", "core_instance_type"):
        if is_graviton(getattr(e, key)):
            problems.append(
                f"emr.{key} ({getattr(e, key)}) is a Graviton (arm64) type, and horovod 0.28.1 does not build on aarch64: "
                "pick an x86_64 type such as m5.2xlarge or m6i.2xlarge"
            )
    return problems


def is_graviton(instance_type: str) -> bool:
    return bool(_GRAVITON.match(instance_type))


def check_launchable(config: RunConfig) -> None:
    problems = launch_problems(config)
    if problems:
        raise UserError("cannot run on EMR: " + "; ".join(problems))


@dataclass(frozen=True)
class ReleaseUrls:
    """Where a release's files live in S3."""

    prefix: str
    bootstrap: str
    stack: str
    wheel: str
    entry: str

    def config(self, name: str) -> str:
        return f"{self.prefix}/configs/{name}"


def release_urls(s3_url: str, release_id: str, version: str) -> ReleaseUrls:
    prefix = f"{s3_url.rstrip('/')}/artifacts/{release_id}"
    return ReleaseUrls(
        prefix=prefix,
        bootstrap=f"{prefix}/bootstrap.sh",
        stack=f"{prefix}/stack.tar.gz",
        wheel=f"{prefix}/horovod_llm-{version}-py3-none-any.whl",
        entry=f"{prefix}/entry.py",
    )


def release_of_bootstrap(path: str) -> str | None:
    """The release id in a bootstrap action's script path, if it is one of ours."""
    match = _RELEASE_PATH.search(path)
    return match.group(1) if match else None


def log_uri(emr: EmrConfig) -> str:
    return emr.log_uri or f"{emr.s3_url.rstrip('/')}/logs/"


def python_path(emr: EmrConfig) -> str:
    return posixpath.join(emr.venv, "bin", "python")


def configurations(emr: EmrConfig) -> list[dict]:
    """Every Spark process on every node runs the venv's interpreter, driver included.

    `spark-env` exports reach the shells EMR starts Spark from; the `spark-defaults`
    properties are what spark-submit itself reads, in client and cluster mode.
    """
    python = python_path(emr)
    spark_defaults = {"spark.pyspark.python": python, "spark.pyspark.driver.python": python}
    if emr.gpu:
        # How each executor finds the GPUs YARN gave its container (EMR ships the script).
        spark_defaults["spark.executor.resource.gpu.discoveryScript"] = GPU_DISCOVERY_SCRIPT
    return [
        {
            "Classification": "spark-env",
            "Properties": {},
            "Configurations": [{"Classification": "export", "Properties": {"PYSPARK_PYTHON": python, "PYSPARK_DRIVER_PYTHON": python}}],
        },
        {"Classification": "spark-defaults", "Properties": spark_defaults},
        *(yarn_gpu_configurations() if emr.gpu else []),
    ]


# Spark's GPU discovery script as EMR installs it.
GPU_DISCOVERY_SCRIPT = "/usr/lib/spark/scripts/gpu/getGpusResources.sh"
# Where bootstrap.sh --gpu mounts the cgroup-v1 devices controller YARN's GPU isolation
# needs on Amazon Linux 2023, whose own hierarchy is cgroup v2.
GPU_CGROUP_ROOT = "/spark-rapids-cgroup"


def yarn_gpu_configurations() -> list[dict]:
    """YARN GPU scheduling and isolation, the classifications AWS documents for Spark on
    EMR 7.x GPU nodes (the Spark RAPIDS guide's, without its SQL plugin): GPUs as a YARN
    resource type, the NodeManager's GPU plugin under the Linux container executor with
    cgroups, and a dominant-resource calculator so that GPUs count in scheduling."""
    return [
        {
            "Classification": "yarn-site",
            "Properties": {
                "yarn.resource-types": "yarn.io/gpu",
                "yarn.nodemanager.resource-plugins": "yarn.io/gpu",
                "yarn.nodemanager.resource-plugins.gpu.allowed-gpu-devices": "auto",
                "yarn.nodemanager.resource-plugins.gpu.path-to-discovery-executables": "/usr/bin",
                "yarn.nodemanager.container-executor.class": "org.apache.hadoop.yarn.server.nodemanager.LinuxContainerExecutor",
                "yarn.nodemanager.linux-container-executor.cgroups.mount": "true",
                "yarn.nodemanager.linux-container-executor.cgroups.mount-path": GPU_CGROUP_ROOT,
                "yarn.nodemanager.linux-container-executor.cgroups.hierarchy": "yarn",
            },
        },
        {
            "Classification": "container-executor",
            "Properties": {},
            "Configurations": [
                {"Classification": "gpu", "Properties": {"module.enabled": "true"}},
                {"Classification": "cgroups", "Properties": {"root": GPU_CGROUP_ROOT, "yarn-hierarchy": "yarn"}},
            ],
        },
        {
            "Classification": "capacity-scheduler",
            "Properties": {"yarn.scheduler.capacity.resource-calculator": "org.apache.hadoop.yarn.util.resource.DominantResourceCalculator"},
        },
    ]


def bootstrap_action(emr: EmrConfig, urls: ReleaseUrls, launcher: str = "spark") -> dict:
    """The bootstrap of every node. Under train.launcher=torch_distributor (Spark's
    TorchDistributor) the nodes get no Horovod, and so no compiler and no build."""
    args = ["--stack", urls.stack, "--package", urls.wheel, "--venv", emr.venv, "--torch-index-url", emr.torch_index_url]
    if emr.gpu:
        args += ["--gpu"]  # the cgroup mount for YARN; a CUDA torch; Horovod with NCCL
    if not launchers.launcher(launcher).needs_horovod:
        args += ["--without-horovod"]
    elif emr.horovod_wheel_url:
        args += ["--horovod-wheel", emr.horovod_wheel_url]
    return {"Name": BOOTSTRAP_ACTION, "ScriptBootstrapAction": {"Path": urls.bootstrap, "Args": args}}


def instance_groups(emr: EmrConfig) -> list[dict]:
    """The primary node is always on demand: with instance groups it is a single
    instance, and a reclaimed spot primary ends the whole cluster. Core nodes follow
    emr.market; a reclaimed spot core node fails only the running step."""

    def group(name: str, role: str, market: str, instance_type: str, count: int) -> dict:
        entry = {"Name": name, "InstanceRole": role, "Market": market, "InstanceType": instance_type, "InstanceCount": count}
        if market == "SPOT":
            entry["BidPrice"] = "OnDemandPrice"  # pay at most the on-demand price
        return entry

    return [
        group("primary", "MASTER", "ON_DEMAND", emr.master_instance_type, 1),
        group("core", "CORE", emr.market, emr.core_instance_type, emr.core_instance_count),
    ]


def run_job_flow_request(config: RunConfig, urls: ReleaseUrls) -> dict:
    emr = config.emr
    instances: dict = {
        "InstanceGroups": instance_groups(emr),
        # Steps come later with `emr submit`; idle_timeout_s ends an idle cluster.
        "KeepJobFlowAliveWhenNoSteps": True,
        "TerminationProtected": False,
    }
    if emr.subnet_id:
        instances["Ec2SubnetId"] = emr.subnet_id
    if emr.key_name:
        instances["Ec2KeyName"] = emr.key_name
    request = {
        "Name": emr.cluster_name,
        "LogUri": log_uri(emr),
        "ReleaseLabel": emr.release_label,
        "Applications": [{"Name": "Hadoop"}, {"Name": "Spark"}],
        "Instances": instances,
        "BootstrapActions": [bootstrap_action(emr, urls, config.train.launcher)],
        "Configurations": configurations(emr),
        "JobFlowRole": emr.instance_profile,
        "ServiceRole": emr.service_role,
        "EbsRootVolumeSize": emr.root_volume_gb,
        # One step at a time: train needs preprocess's dataset, generate train's checkpoint.
        "StepConcurrencyLevel": 1,
    }
    if emr.idle_timeout_s:
        request["AutoTerminationPolicy"] = {"IdleTimeout": emr.idle_timeout_s}
    if emr.tags:
        request["Tags"] = [{"Key": key, "Value": value} for key, value in sorted(emr.tags.items())]
    return request


def config_name(config_yaml: str) -> str:
    """The uploaded config's file name: named by its content, so reruns never overwrite."""
    return f"config-{hashlib.sha256(config_yaml.encode()).hexdigest()[:12]}.yaml"


def spark_submit_args(config: RunConfig, stage: str, urls: ReleaseUrls, config_url: str) -> list[str]:
    """The command line of one step.

    preprocess and train run in cluster mode (the driver is a YARN container on a core
    node) with the config shipped by `--files` into the driver's working folder.
    generate starts no SparkContext, which YARN cluster mode fails ("User did not
    initialize spark context!"), so it runs in client mode on the primary node, where its
    text lands in the step's stdout log.
    """
    if stage not in STAGES:
        raise UserError(f"unknown stage '{stage}': choose from {', '.join(STAGES)}")
    mode = "client" if stage == "generate" else "cluster"
    args = ["spark-submit", "--deploy-mode", mode, "--master", "yarn", "--name", f"{config.spark.app_name}-{stage}"]
    if stage == "generate":
        g = config.generate
        return args + [urls.entry, "generate", "--checkpoint", config.output_url, "--prompt", g.prompt, *as_flags(g.sampling())]
    # In cluster mode the driver is YARN's application master, and its Python process
    # (torch, Horovod's driver service, sentencepiece training) lives outside the JVM
    # heap: YARN counts it as overhead, and kills the container past Spark's default
    # (10% of the heap, at least 384 MiB).
    args += ["--driver-memory", config.spark.driver_memory, "--conf", f"spark.driver.memoryOverhead={config.emr.driver_memory_overhead}"]
    if stage == "train":
        # EMR shows step arguments to anyone who may describe the cluster: credentials
        # travel in the shipped config instead (`cluster_config`).
        for key, value in config.emr.train_conf.items():
            if not is_secret_key(key):
                args += ["--conf", f"{key}={value}"]
    return args + ["--files", config_url, urls.entry, stage, "--config", posixpath.basename(config_url)]


def cluster_config(config: RunConfig) -> RunConfig:
    """The config the steps run with: emr.train_conf's credential settings, which stay
    off the step's command line, join spark.conf, which the driver applies when it
    builds its SparkSession."""
    secret = {k: v for k, v in config.emr.train_conf.items() if is_secret_key(k)}
    if not secret:
        return config
    return dataclasses.replace(config, spark=dataclasses.replace(config.spark, conf={**config.spark.conf, **secret}))


def step(config: RunConfig, stage: str, urls: ReleaseUrls, config_url: str) -> dict:
    return {
        "Name": STEP_PREFIX + stage,
        "ActionOnFailure": config.emr.step_action_on_failure,
        "HadoopJarStep": {"Jar": "command-runner.jar", "Args": spark_submit_args(config, stage, urls, config_url)},
    }


def add_job_flow_steps_request(cluster_id: str, steps: list[dict]) -> dict:
    return {"JobFlowId": cluster_id, "Steps": steps}


def terminate_request(cluster_id: str) -> dict:
    return {"JobFlowIds": [cluster_id]}


def put_object(url: str, source: str) -> dict:
    """An upload as a dry-run entry: the PutObject request and the file it sends."""
    bucket, key = split_s3(url)
    return {"service": "s3", "operation": "PutObject", "params": {"Bucket": bucket, "Key": key}, "source": source}


def emr_request(operation: str, params: dict) -> dict:
    return {"service": "emr", "operation": operation, "params": params}


# --- the aws CLI equivalents (`aws emr run-job-flow` and `add-job-flow-steps` are not
# --- in the CLI: its create-cluster and add-steps take their own shapes)


def _json(value) -> str:
    return shlex.quote(json.dumps(value, separators=(",", ":")))


def s3_cp_cli(source: str, url: str, region: str) -> str:
    return f"aws s3 cp {shlex.quote(source)} {shlex.quote(url)} --region {shlex.quote(region)}"


def create_cluster_cli(request: dict, region: str) -> str:
    instances = request["Instances"]
    groups = []
    for group in instances["InstanceGroups"]:
        entry = {
            "Name": group["Name"],
            "InstanceGroupType": group["InstanceRole"],
            "InstanceType": group["InstanceType"],
            "InstanceCount": group["InstanceCount"],
        }
        if "BidPrice" in group:  # the CLI's create-cluster means SPOT by a BidPrice
            entry["BidPrice"] = group["BidPrice"]
        groups.append(entry)
    ec2 = {"InstanceProfile": request["JobFlowRole"]}
    if "Ec2SubnetId" in instances:
        ec2["SubnetId"] = instances["Ec2SubnetId"]
    if "Ec2KeyName" in instances:
        ec2["KeyName"] = instances["Ec2KeyName"]
    actions = [{"Name": a["Name"], "Path": a["ScriptBootstrapAction"]["Path"], "Args": a["ScriptBootstrapAction"]["Args"]} for a in request["BootstrapActions"]]
    parts = [
        "aws emr create-cluster", f"--region {shlex.quote(region)}",
        f"--name {shlex.quote(request['Name'])}", f"--release-label {shlex.quote(request['ReleaseLabel'])}",
        "--applications " + " ".join(f"Name={a['Name']}" for a in request["Applications"]),
        f"--log-uri {shlex.quote(request['LogUri'])}", f"--service-role {shlex.quote(request['ServiceRole'])}",
        f"--ec2-attributes {_json(ec2)}", f"--instance-groups {_json(groups)}",
        f"--bootstrap-actions {_json(actions)}", f"--configurations {_json(request['Configurations'])}",
        f"--ebs-root-volume-size {request['EbsRootVolumeSize']}", f"--step-concurrency-level {request['StepConcurrencyLevel']}",
    ]  # fmt: skip
    if "AutoTerminationPolicy" in request:
        parts.append(f"--auto-termination-policy {_json(request['AutoTerminationPolicy'])}")
    if "Tags" in request:
        parts.append("--tags " + " ".join(shlex.quote(f"{t['Key']}={t['Value']}") for t in request["Tags"]))
    return " ".join(parts)


def add_steps_cli(request: dict, region: str) -> str:
    steps = [
        {"Type": "CUSTOM_JAR", "Name": s["Name"], "ActionOnFailure": s["ActionOnFailure"], "Jar": s["HadoopJarStep"]["Jar"], "Args": s["HadoopJarStep"]["Args"]}
        for s in request["Steps"]
    ]
    return f"aws emr add-steps --region {shlex.quote(region)} --cluster-id {shlex.quote(request['JobFlowId'])} --steps {_json(steps)}"


def terminate_cli(request: dict, region: str) -> str:
    return f"aws emr terminate-clusters --region {shlex.quote(region)} --cluster-ids " + " ".join(shlex.quote(c) for c in request["JobFlowIds"])


# --- where EMR puts logs (copied from the nodes to LogUri about every 5 minutes)


def step_log_url(log_uri_: str, cluster_id: str, step_id: str, stream: str) -> str:
    """stdout/stderr of a step's command: spark-submit's own output (and generate's text)."""
    return f"{log_uri_.rstrip('/')}/{cluster_id}/steps/{step_id}/{stream}.gz"


def containers_prefix(log_uri_: str, cluster_id: str, application_id: str) -> str:
    """YARN container logs of a Spark application: the driver is its first container."""
    return f"{log_uri_.rstrip('/')}/{cluster_id}/containers/{application_id}/"


def application_id(step_stderr: str) -> str | None:
    """The YARN application a spark-submit step started, from the step's stderr."""
    found = _APPLICATION.findall(step_stderr)
    return found[-1] if found else None


def step_stage(name: str) -> str | None:
    """'horovod-llm train' -> 'train'; None for steps that are not ours."""
    if name.startswith(STEP_PREFIX) and name[len(STEP_PREFIX) :] in STAGES:
        return name[len(STEP_PREFIX) :]
    return None

"""What `emr up` checks before it uploads or creates anything: what a new account most
often lacks (the bucket in the right region, EMR's default roles, EC2 vCPU quota).

The arithmetic and the messages are pure functions; `check_before_up` gathers the facts
through `client.Aws`. Each problem is one line naming the fix, and all of them are
reported at once. A check whose call IAM denies is skipped with a warning (client.py).
"""

from __future__ import annotations

import logging
import re

from horovod_llm.config import EmrConfig
from horovod_llm.emr import requests as rq
from horovod_llm.emr.client import NotFound
from horovod_llm.errors import UserError

log = logging.getLogger(__name__)

# EC2's vCPU quotas for the standard families (A, C, D, H, I, M, R, T, Z), by market.
# Other families (G, P, X, Inf, DL, Trn, HPC, ...) have quotas of their own.
STANDARD_QUOTAS = {"ON_DEMAND": "L-1216C47A", "SPOT": "L-34B43A08"}
_STANDARD = re.compile(r"^(?!inf|dl|hpc|mac|trn)[acdhimrtz]", re.IGNORECASE)
_CREATE_ROLES = "create EMR's default roles with 'aws emr create-default-roles'"


def counts_as_standard(instance_type: str) -> bool:
    return bool(_STANDARD.match(instance_type))


def vcpus_needed(groups: list[dict], vcpus: dict[str, int]) -> dict[str, int]:
    """vCPUs per market that the instance groups (as RunJobFlow gets them) count
    against the standard-family quotas; vcpus maps instance type -> vCPUs."""
    needed: dict[str, int] = {}
    for group in groups:
        if counts_as_standard(group["InstanceType"]):
            needed[group["Market"]] = needed.get(group["Market"], 0) + vcpus[group["InstanceType"]] * group["InstanceCount"]
    return needed


def quota_problem(market: str, needed: int, quota: float, region: str) -> str | None:
    """The quota caps every running instance of the account in the region, so a quota at
    least `needed` can still be too small; one below it is sure to fail."""
    if needed <= quota:
        return None
    code, kind = STANDARD_QUOTAS[market], "on-demand" if market == "ON_DEMAND" else "spot"
    return (
        f"the cluster needs {needed} {kind} vCPUs of standard (A, C, D, H, I, M, R, T, Z) instances but the account's "
        f"EC2 quota {code} in {region} is {quota:g}: request more with 'aws service-quotas request-service-quota-increase "
        f"--service-code ec2 --quota-code {code} --desired-value {needed} --region {region}', or use fewer or smaller nodes"
    )


def bucket_region(location_constraint: str | None) -> str:
    """GetBucketLocation's LocationConstraint as a region: none means us-east-1, and
    buckets made long ago in Ireland say EU."""
    return {None: "us-east-1", "": "us-east-1", "EU": "eu-west-1"}.get(location_constraint, location_constraint)


def region_problem(bucket: str, region_of_bucket: str, region: str) -> str | None:
    if region_of_bucket == region:
        return None
    return f"bucket {bucket} is in {region_of_bucket} but emr.region is {region}: set emr.region={region_of_bucket}, or use a bucket in {region}"


def _bucket_problems(aws, emr: EmrConfig) -> list[str]:
    problems = []
    for bucket in dict.fromkeys(rq.split_s3(url)[0] for url in (emr.s3_url, rq.log_uri(emr))):
        try:
            location = aws.bucket_location(bucket)
        except NotFound:
            problems.append(f"bucket {bucket} does not exist: create it with 'aws s3 mb s3://{bucket} --region {emr.region}'")
            continue
        if location is not None:
            problems.append(region_problem(bucket, bucket_region(location.get("LocationConstraint")), emr.region))
    return problems


def _role_problems(aws, emr: EmrConfig) -> list[str]:
    problems = []
    try:
        aws.role(emr.service_role)
    except NotFound:
        problems.append(f"emr.service_role {emr.service_role} does not exist: {_CREATE_ROLES}")
    try:
        profile = aws.instance_profile(emr.instance_profile)
    except NotFound:
        problems.append(f"emr.instance_profile {emr.instance_profile} does not exist: {_CREATE_ROLES}")
    else:
        if profile is not None and not profile.get("Roles"):
            problems.append(
                f"instance profile {emr.instance_profile} holds no role, so the nodes could not reach S3: add one with "
                f"'aws iam add-role-to-instance-profile --instance-profile-name {emr.instance_profile} --role-name EMR_EC2_DefaultRole'"
            )
    return problems


def _capacity_problems(aws, emr: EmrConfig) -> list[str]:
    problems, vcpus = [], {}
    for key in ("master_instance_type", "core_instance_type"):
        name = getattr(emr, key)
        if name in vcpus:
            continue
        try:
            info = aws.instance_type(name)
        except NotFound:
            problems.append(f"emr.{key} ({name}) is not an instance type EC2 offers in {emr.region}: check its spelling and region")
            continue
        if info is None:
            return problems  # the quota check needs every type's vCPUs
        vcpus[name] = info["VCpuInfo"]["DefaultVCpus"]
    if problems:
        return problems
    groups = rq.instance_groups(emr)
    for group in groups:
        if not counts_as_standard(group["InstanceType"]):
            log.warning("%s counts against an EC2 quota of its own family, not checked here", group["InstanceType"])
    for market, needed in vcpus_needed(groups, vcpus).items():
        try:
            quota = aws.ec2_quota(STANDARD_QUOTAS[market])
        except NotFound:
            log.warning("EC2 quota %s is not available from Service Quotas in %s: not checked", STANDARD_QUOTAS[market], emr.region)
            continue
        if quota is not None:
            problems.append(quota_problem(market, needed, quota, emr.region))
    return problems


def check_before_up(aws, emr: EmrConfig) -> None:
    """Raise one UserError listing every problem found; return when there is none."""
    problems = [p for p in (*_bucket_problems(aws, emr), *_role_problems(aws, emr), *_capacity_problems(aws, emr)) if p]
    if problems:
        raise UserError("cannot start the cluster: " + "; ".join(problems))
    log.info("prechecks done: bucket, roles, instance types, EC2 vCPU quota")

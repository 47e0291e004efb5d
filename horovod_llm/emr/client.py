"""The thin boto3 shell: every AWS call `horovod-llm emr` makes, with errors as UserError.

Endpoints and credentials come from the standard AWS chain; `AWS_ENDPOINT_URL` (or
`AWS_ENDPOINT_URL_EMR` / `AWS_ENDPOINT_URL_S3`) points the clients at another server.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import TypeVar

from horovod_llm.emr.requests import split_s3
from horovod_llm.errors import UserError

log = logging.getLogger(__name__)

T = TypeVar("T")
DENIED = ("AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "403")


class NotFound(Exception):
    """AWS answered that what a precheck asked about does not exist."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextmanager
def aws_errors(what: str, region: str) -> Iterator[None]:
    """Turn botocore's exceptions into one-line messages that name the fix."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError, NoRegionError

    try:
        yield
    except NoCredentialsError:
        raise UserError(f"{what}: no AWS credentials found: run 'aws configure', set AWS_PROFILE, or run where an IAM role applies") from None
    except NoRegionError:
        raise UserError(f"{what}: no AWS region: set emr.region") from None
    except EndpointConnectionError as exc:
        raise UserError(
            f"{what}: cannot reach {exc.kwargs.get('endpoint_url')}: check emr.region ({region}), the network, and AWS_ENDPOINT_URL if set"
        ) from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "?"), _one_line(error.get("Message", ""))
        if code == "NoSuchBucket":
            bucket = error.get("BucketName", "")
            raise UserError(f"{what}: bucket {bucket} does not exist: create it with 'aws s3 mb s3://{bucket} --region {region}'") from None
        if code in DENIED:
            raise UserError(f"{what}: access denied ({message}): grant your IAM identity the permissions listed in docs/emr.md") from None
        if "role" in message.lower():
            raise UserError(f"{what}: {code}: {message}: create EMR's default roles with 'aws emr create-default-roles'") from None
        raise UserError(f"{what}: {code}: {message}") from None


class Aws:
    """EMR and S3 clients for one region, and the read-only ones `emr up` checks with."""

    def __init__(self, region: str):
        import boto3

        self.region = region
        self._session = boto3.session.Session(region_name=region)
        self.emr = self._session.client("emr")
        self.s3 = self._session.client("s3")

    @cached_property
    def iam(self):
        return self._session.client("iam")

    @cached_property
    def ec2(self):
        return self._session.client("ec2")

    @cached_property
    def quotas(self):
        return self._session.client("service-quotas")

    def _errors(self, what: str):
        return aws_errors(what, self.region)

    def _precheck(self, what: str, permission: str, call: Callable[[], T], missing: str) -> T | None:
        """call()'s answer; NotFound for the error code `missing`; None, with a warning,
        when IAM denies the call.

        A denied precheck does not block: the checks are read-only conveniences, and an
        identity trusted to create clusters may lack them (service quotas especially).
        Whatever they would have caught still fails later, in the call that needs it.
        """
        from botocore.exceptions import ClientError

        with self._errors(what):
            try:
                return call()
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if code == missing:
                    raise NotFound(code) from None
                if code in DENIED:
                    log.warning("%s: access denied, not checked (grant %s to have it checked before anything is created)", what, permission)
                    return None
                raise

    # --- prechecks (preflight.py)

    def bucket_location(self, bucket: str) -> dict | None:
        return self._precheck(f"checking bucket {bucket}", "s3:GetBucketLocation", lambda: self.s3.get_bucket_location(Bucket=bucket), "NoSuchBucket")

    def role(self, name: str) -> dict | None:
        return self._precheck(f"checking IAM role {name}", "iam:GetRole", lambda: self.iam.get_role(RoleName=name)["Role"], "NoSuchEntity")

    def instance_profile(self, name: str) -> dict | None:
        return self._precheck(
            f"checking instance profile {name}",
            "iam:GetInstanceProfile",
            lambda: self.iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"],
            "NoSuchEntity",
        )

    def instance_type(self, name: str) -> dict | None:
        return self._precheck(
            f"checking instance type {name}",
            "ec2:DescribeInstanceTypes",
            lambda: self.ec2.describe_instance_types(InstanceTypes=[name])["InstanceTypes"][0],
            "InvalidInstanceType",
        )

    def ec2_quota(self, code: str) -> float | None:
        return self._precheck(
            f"reading EC2 quota {code}",
            "servicequotas:GetServiceQuota",
            lambda: self.quotas.get_service_quota(ServiceCode="ec2", QuotaCode=code)["Quota"]["Value"],
            "NoSuchResourceException",
        )

    # --- S3

    def upload_file(self, path: Path, url: str) -> None:
        # One PutObject: release files are small (the wheel is ~50 KB), and boto3's
        # managed upload_file would wrap a missing bucket into a less telling error.
        bucket, key = split_s3(url)
        log.info("uploading %s to %s", path.name, url)
        with self._errors(f"uploading {path.name} to {url}"), open(path, "rb") as body:
            self.s3.put_object(Bucket=bucket, Key=key, Body=body)

    def upload_bytes(self, data: bytes, url: str) -> None:
        bucket, key = split_s3(url)
        log.info("uploading %s", url)
        with self._errors(f"uploading {url}"):
            self.s3.put_object(Bucket=bucket, Key=key, Body=data)

    def read(self, url: str) -> bytes | None:
        """An object's bytes, gunzipped when its name ends in .gz; None when it is missing."""
        bucket, key = split_s3(url)
        with self._errors(f"reading {url}"):
            try:
                data = self.s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            except self.s3.exceptions.NoSuchKey:
                return None
        return gzip.decompress(data) if key.endswith(".gz") else data

    def list_urls(self, prefix_url: str) -> list[str]:
        bucket, prefix = split_s3(prefix_url)
        urls = []
        with self._errors(f"listing {prefix_url}"):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                urls += [f"s3://{bucket}/{item['Key']}" for item in page.get("Contents", [])]
        return sorted(urls)

    # --- EMR

    def run_job_flow(self, request: dict) -> str:
        with self._errors("starting the cluster (RunJobFlow)"):
            return self.emr.run_job_flow(**request)["JobFlowId"]

    def add_job_flow_steps(self, request: dict) -> list[str]:
        with self._errors(f"adding steps to {request['JobFlowId']} (AddJobFlowSteps)"):
            return self.emr.add_job_flow_steps(**request)["StepIds"]

    def describe_cluster(self, cluster_id: str) -> dict:
        with self._errors(f"describing cluster {cluster_id}"):
            return self.emr.describe_cluster(ClusterId=cluster_id)["Cluster"]

    def list_steps(self, cluster_id: str) -> list[dict]:
        """Every step of the cluster, oldest first (EMR lists newest first)."""
        steps: list[dict] = []
        with self._errors(f"listing the steps of {cluster_id}"):
            for page in self.emr.get_paginator("list_steps").paginate(ClusterId=cluster_id):
                steps += page["Steps"]
        return steps[::-1]

    def list_bootstrap_actions(self, cluster_id: str) -> list[dict]:
        with self._errors(f"listing the bootstrap actions of {cluster_id}"):
            return self.emr.list_bootstrap_actions(ClusterId=cluster_id)["BootstrapActions"]

    def terminate_job_flows(self, request: dict) -> None:
        with self._errors(f"terminating {', '.join(request['JobFlowIds'])}"):
            self.emr.terminate_job_flows(**request)

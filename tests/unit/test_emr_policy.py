"""docs/emr.md's IAM policy against the AWS calls in horovod_llm/emr: a call added without
its permission, or a permission left behind by a call that went, fails here."""

import ast
import json
import re
from pathlib import Path

import horovod_llm.emr
from horovod_llm.config import EmrConfig

DOC = Path(__file__).resolve().parents[2] / "docs" / "emr.md"
EMR_PACKAGE = Path(horovod_llm.emr.__file__).parent
# boto3 service name -> the attribute client.py keeps its client in, and IAM's prefix.
CLIENTS = {"emr": ("emr", "elasticmapreduce"), "s3": ("s3", "s3"), "iam": ("iam", "iam"), "ec2": ("ec2", "ec2"), "service-quotas": ("quotas", "servicequotas")}
# S3's IAM actions are not named after its operations.
S3_ACTIONS = {"put_object": "s3:PutObject", "get_object": "s3:GetObject", "list_objects_v2": "s3:ListBucket", "get_bucket_location": "s3:GetBucketLocation"}
# What EMR authorizes on the caller beyond the calls themselves.
IMPLIED = {
    "iam:PassRole": "RunJobFlow hands EMR the service role and the instance profile's role",
    "elasticmapreduce:AddTags": "RunJobFlow with Tags",
    "elasticmapreduce:PutAutoTerminationPolicy": "RunJobFlow with an AutoTerminationPolicy",
    "iam:CreateServiceLinkedRole": "EMR creates AWSServiceRoleForEMRCleanup, as the caller, on an account's first cluster",
}


def documented_policy() -> dict:
    (block,) = [b for b in re.findall(r"```json\n(.*?)```", DOC.read_text(), re.DOTALL) if '"2012-10-17"' in b]
    return json.loads(block)


def aws_calls() -> tuple[set[str], set[tuple[str, str]]]:
    """(services of every `.client("...")`, (client attribute, operation) of every
    `self.<client>.<operation>(...)` and `self.<client>.get_paginator("<operation>")`)."""
    services, calls = set(), set()
    attributes = {attribute for attribute, _ in CLIENTS.values()}
    for path in sorted(EMR_PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            func = node.func
            if func.attr == "client" and node.args and isinstance(node.args[0], ast.Constant):
                services.add(node.args[0].value)
            owner = func.value
            if isinstance(owner, ast.Attribute) and owner.attr in attributes and isinstance(owner.value, ast.Name) and owner.value.id == "self":
                operation = node.args[0].value if func.attr == "get_paginator" else func.attr
                calls.add((owner.attr, operation))
    return services, calls


def iam_action(attribute: str, operation: str) -> str:
    prefix = {a: p for a, p in CLIENTS.values()}[attribute]
    if prefix == "s3":
        assert operation in S3_ACTIONS, f"s3.{operation}: add its IAM action to S3_ACTIONS"
        return S3_ACTIONS[operation]
    return f"{prefix}:" + "".join(word.capitalize() for word in operation.split("_"))


def documented_actions() -> set[str]:
    actions = set()
    for statement in documented_policy()["Statement"]:
        assert statement["Effect"] == "Allow"
        actions |= {statement["Action"]} if isinstance(statement["Action"], str) else set(statement["Action"])
    return actions


def test_the_scan_sees_every_client():
    services, calls = aws_calls()
    assert services == set(CLIENTS), "a new boto3 client: add it to CLIENTS"
    # The scan reads calls, not the policy: a few it must find, or it finds nothing.
    assert {("emr", "run_job_flow"), ("emr", "list_steps"), ("s3", "list_objects_v2"), ("quotas", "get_service_quota")} <= calls


def test_the_documented_policy_is_exactly_what_emr_calls_need():
    _, calls = aws_calls()
    needed = {iam_action(attribute, operation) for attribute, operation in calls} | set(IMPLIED)
    documented = documented_actions()
    assert needed - documented == set(), "calls whose permission docs/emr.md lacks"
    assert documented - needed == set(), "permissions in docs/emr.md that no call needs"


def test_roles_are_passed_and_created_only_where_emr_needs_them():
    emr = EmrConfig()
    statements = documented_policy()["Statement"]
    passed = {s["Resource"]: s["Condition"]["StringLike"]["iam:PassedToService"] for s in statements if s["Action"] == "iam:PassRole"}
    assert passed == {
        f"arn:aws:iam::*:role/{emr.service_role}": "elasticmapreduce.amazonaws.com*",
        f"arn:aws:iam::*:role/{emr.instance_profile}": "ec2.amazonaws.com*",
    }
    (linked,) = [s for s in statements if s["Action"] == "iam:CreateServiceLinkedRole"]
    assert linked["Resource"].endswith("/elasticmapreduce.amazonaws.com*/AWSServiceRoleForEMRCleanup*")
    assert "elasticmapreduce.amazonaws.com" in linked["Condition"]["StringEquals"]["iam:AWSServiceName"]

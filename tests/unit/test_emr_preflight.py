"""`emr up`'s prechecks: the vCPU arithmetic, the quota and region messages, by hand.

The checks against an account (bucket, roles, instance types, denied calls) run on moto
in tests/integration/test_emr_aws.py. moto serves no EC2 quota, so the one path it
cannot reach, a quota below what the cluster needs, runs here on a stand-in account.
"""

import pytest

from horovod_llm.config import CONFIG_DIR, load_config
from horovod_llm.emr import preflight
from horovod_llm.emr import requests as rq
from horovod_llm.errors import UserError

EMR_YAML = CONFIG_DIR / "emr.yaml"
VCPUS = {"m5.xlarge": 4, "m5.2xlarge": 8, "g4dn.xlarge": 4}  # EC2's DefaultVCpus


def groups(*overrides):
    return rq.instance_groups(load_config(EMR_YAML, ["emr.s3_url=s3://bkt/p", *overrides]).emr)


def test_the_shipped_cluster_needs_20_on_demand_vcpus():
    assert preflight.vcpus_needed(groups(), VCPUS) == {"ON_DEMAND": 4 + 2 * 8}


def test_spot_core_nodes_count_against_the_spot_quota_and_the_primary_against_on_demand():
    assert preflight.vcpus_needed(groups("emr.market=SPOT", "emr.core_instance_count=3"), VCPUS) == {"ON_DEMAND": 4, "SPOT": 3 * 8}


def test_families_with_quotas_of_their_own_are_not_counted():
    assert preflight.vcpus_needed(groups("emr.core_instance_type=g4dn.xlarge"), VCPUS) == {"ON_DEMAND": 4}


@pytest.mark.parametrize(
    ("instance_type", "standard"),
    [("m5.xlarge", True), ("c5n.large", True), ("r6i.large", True), ("t3.small", True), ("i3.large", True), ("z1d.large", True)]
    + [("g4dn.xlarge", False), ("p3.2xlarge", False), ("x2idn.large", False), ("inf1.xlarge", False), ("dl1.24xlarge", False)]
    + [("hpc6a.48xlarge", False), ("trn1.2xlarge", False), ("u-6tb1.metal", False)],
)
def test_standard_families(instance_type, standard):
    assert preflight.counts_as_standard(instance_type) is standard


def test_a_quota_below_the_need_names_the_increase_to_request():
    assert preflight.quota_problem("ON_DEMAND", 20, 20.0, "us-east-1") is None
    assert preflight.quota_problem("ON_DEMAND", 20, 5.0, "eu-west-1") == (
        "the cluster needs 20 on-demand vCPUs of standard (A, C, D, H, I, M, R, T, Z) instances but the account's EC2 quota L-1216C47A "
        "in eu-west-1 is 5: request more with 'aws service-quotas request-service-quota-increase --service-code ec2 "
        "--quota-code L-1216C47A --desired-value 20 --region eu-west-1', or use fewer or smaller nodes"
    )
    assert "16 spot vCPUs" in preflight.quota_problem("SPOT", 16, 0.0, "us-east-1") and "L-34B43A08" in preflight.quota_problem("SPOT", 16, 0.0, "us-east-1")


def test_bucket_regions():
    assert preflight.bucket_region(None) == "us-east-1"  # S3 says nothing for us-east-1
    assert preflight.bucket_region("EU") == "eu-west-1"  # buckets made long ago in Ireland
    assert preflight.bucket_region("eu-central-1") == "eu-central-1"
    assert preflight.region_problem("bkt", "us-east-1", "us-east-1") is None
    assert preflight.region_problem("bkt", "eu-west-1", "us-east-1") == (
        "bucket bkt is in eu-west-1 but emr.region is us-east-1: set emr.region=eu-west-1, or use a bucket in us-east-1"
    )


class Account:
    """Stands in for client.Aws where moto cannot: an account with `quota` on-demand vCPUs.
    Answers as boto3 does for a bucket in us-east-1 and the default roles."""

    def __init__(self, quota):
        self.quota, self.quota_codes = quota, []

    def bucket_location(self, bucket):
        return {"LocationConstraint": None}

    def role(self, name):
        return {"RoleName": name}

    def instance_profile(self, name):
        return {"InstanceProfileName": name, "Roles": [{"RoleName": name}]}

    def instance_type(self, name):
        return {"InstanceType": name, "VCpuInfo": {"DefaultVCpus": VCPUS[name]}}

    def ec2_quota(self, code):
        self.quota_codes.append(code)
        return self.quota


def test_a_new_accounts_quota_stops_up_in_one_line():
    emr = load_config(EMR_YAML, ["emr.s3_url=s3://bkt/p"]).emr
    with pytest.raises(UserError) as info:
        preflight.check_before_up(Account(quota=5.0), emr)
    message = str(info.value)
    assert message.startswith("cannot start the cluster: the cluster needs 20 on-demand vCPUs") and "\n" not in message
    account = Account(quota=32.0)
    preflight.check_before_up(account, emr)
    assert account.quota_codes == ["L-1216C47A"]

"""A worker host lost under train.launcher=torch_distributor (host_loss.py): the job fails
naming the rank and its host within the bound docs/reliability.md states for that
launcher, and train.max_restarts=1 resumes once the host is back."""

from __future__ import annotations

import pytest

from tests.cluster.host_loss import fails_naming_the_host_and_resumes, preprocessed_cluster

pytestmark = [pytest.mark.spark, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_dataset):
    with preprocessed_cluster(tmp_path_factory.mktemp("cluster"), tiny_dataset) as started:
        yield started


def test_a_lost_host_fails_the_job_naming_it_and_a_restart_resumes(cluster):
    fails_naming_the_host_and_resumes(cluster, "torch_distributor", 1, "mid-interval")

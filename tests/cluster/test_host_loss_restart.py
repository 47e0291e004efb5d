"""A worker host lost in default mode under the Spark launcher (host_loss.py): the job
fails naming the rank and its host within the bound docs/reliability.md states, and
train.max_restarts=1 resumes from the latest complete checkpoint once the host is back."""

from __future__ import annotations

import pytest

from tests.cluster.host_loss import fails_naming_the_host_and_resumes, preprocessed_cluster

pytestmark = [pytest.mark.spark, pytest.mark.horovod, pytest.mark.cluster]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, tiny_dataset):
    with preprocessed_cluster(tmp_path_factory.mktemp("cluster"), tiny_dataset) as started:
        yield started


@pytest.mark.parametrize("rank, moment", [(0, "mid-interval"), (1, "after-checkpoint")], ids=lambda v: str(v))
def test_a_lost_host_fails_the_job_naming_it_and_a_restart_resumes(cluster, rank, moment):
    fails_naming_the_host_and_resumes(cluster, "spark", rank, moment)

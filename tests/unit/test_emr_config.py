"""The emr config section: its checks, and train.num_proc against the training executors."""

import pytest

from horovod_llm.config import CONFIG_DIR, load_config
from horovod_llm.errors import UserError

EMR_YAML = CONFIG_DIR / "emr.yaml"


def test_emr_yaml_interpolates_the_one_prefix():
    config = load_config(EMR_YAML, ["emr.s3_url=s3://my-bucket/team"])
    assert config.output_url == "s3://my-bucket/team/runs/shakespeare"
    assert config.spark.master == "yarn" and config.train.launcher == "spark"
    assert config.emr.train_conf["spark.dynamicAllocation.enabled"] == "false"


def test_num_proc_beyond_the_training_slots_is_refused():
    with pytest.raises(UserError) as info:
        load_config(EMR_YAML, ["train.num_proc=5"])
    assert (
        "train.num_proc (5) needs that many task slots at once, but emr.train_conf gives 4 "
        "(spark.executor.instances 2 x spark.executor.cores 8 // spark.task.cpus 4)" in str(info.value)
    )


def test_bracketed_dotted_keys_override_train_conf():
    config = load_config(EMR_YAML, ["emr.train_conf[spark.task.cpus]=2", "train.num_proc=8"])
    assert config.emr.train_conf["spark.task.cpus"] == "2" and config.train.num_proc == 8


def test_dotted_override_without_brackets_means_the_same():
    config = load_config(EMR_YAML, ["emr.train_conf.spark.task.cpus=2", "emr.tags.team.name=ml", "train.num_proc=8"])
    assert config.emr.train_conf["spark.task.cpus"] == "2" and config.emr.tags["team.name"] == "ml"


def test_dynamic_allocation_must_be_off_for_training():
    with pytest.raises(UserError, match="spark.dynamicAllocation.enabled: 'false'"):
        load_config(EMR_YAML, ["emr.train_conf[spark.dynamicAllocation.enabled]=true"])


def test_emr_heterogeneous_executors_must_be_off_for_training():
    assert load_config(EMR_YAML).emr.train_conf["spark.yarn.heterogeneousExecutors.enabled"] == "false"
    with pytest.raises(UserError, match="spark.yarn.heterogeneousExecutors.enabled: 'false': EMR would resize the executors"):
        load_config(EMR_YAML, ["emr.train_conf[spark.yarn.heterogeneousExecutors.enabled]=true"])


def test_every_emr_problem_at_once():
    with pytest.raises(UserError) as info:
        load_config(
            EMR_YAML,
            [
                "emr.release_label=emr-6.15.0", "emr.market=CHEAP", "emr.core_instance_count=0", "emr.venv=venv", "emr.idle_timeout_s=5",
                "emr.log_uri=/tmp/logs", "emr.driver_memory_overhead=2 GB",
            ],
        )  # fmt: skip
    message = str(info.value)
    for fragment in (
        "emr.release_label ('emr-6.15.0')",
        "emr.market ('CHEAP')",
        "emr.core_instance_count (0)",
        "emr.venv ('venv')",
        "emr.idle_timeout_s (5)",
        "emr.log_uri ('/tmp/logs')",
        "emr.driver_memory_overhead ('2 GB') must be a Spark memory size such as 2g or 2048m",
    ):
        assert fragment in message
    assert "\n" not in message


def test_local_configs_have_no_emr_sizing_to_check():
    config = load_config(CONFIG_DIR / "local.yaml", ["train.num_proc=64"])
    assert config.emr.train_conf == {} and config.train.num_proc == 64

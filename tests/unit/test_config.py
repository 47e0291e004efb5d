import pytest

from horovod_llm.config import CONFIG_DIR, from_dict, load_config, to_dict, to_yaml
from horovod_llm.errors import UserError

SHIPPED = sorted(CONFIG_DIR.glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.name for p in SHIPPED} >= {"local.yaml", "tiny.yaml"}


def test_word2vec_vector_size_must_match_the_model():
    with pytest.raises(UserError, match=r"embedding.word2vec.vector_size \(64\) must be 0 or model.n_embd \(256\)"):
        load_config(None, ["embedding.word2vec.vector_size=64", "model.n_embd=256"])
    with pytest.raises(UserError, match="data.normalization"):
        load_config(None, ["data.normalization=nfd"])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_loads(path):
    config = load_config(path)
    assert config.output_url
    assert from_dict(to_dict(config)) == config


def test_overrides_win_over_file_and_are_typed():
    config = load_config(CONFIG_DIR / "local.yaml", ["train.max_steps=20", "data.window_size=64", "data.overlap=32"])
    assert config.train.max_steps == 20 and isinstance(config.train.max_steps, int)
    assert config.data.window_size == 64
    assert config.train.max_minutes == 4  # from the file
    assert config.model.n_embd is None  # the recipe's, resolved for the corpus (recipe.py)


def test_unknown_key_is_named():
    with pytest.raises(UserError, match=r"train\.max_stepz"):
        load_config(CONFIG_DIR / "local.yaml", ["train.max_stepz=3"])


def test_unknown_key_in_file_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  windowsize: 5\n")
    with pytest.raises(UserError, match=r"data\.windowsize"):
        load_config(path)


def test_wrong_type_is_named():
    with pytest.raises(UserError, match=r"data\.window_size"):
        load_config(None, ["data.window_size=big"])


def test_window_not_larger_than_overlap_gives_the_reason():
    with pytest.raises(UserError, match=r"data\.window_size \(8\) must be larger than data\.overlap \(8\): the stride would be 0"):
        load_config(None, ["data.window_size=8", "data.overlap=8"])


def test_every_problem_is_reported_at_once():
    with pytest.raises(UserError) as info:
        load_config(None, ["data.window_size=1", "train.num_proc=0", "model.n_head=3", "model.n_embd=256", "train.horovod_cycle_time_ms=0"])
    message = str(info.value)
    assert "data.window_size (1)" in message and "train.num_proc (0)" in message and "model.n_embd (256)" in message
    assert "train.horovod_cycle_time_ms (0.0) must be positive" in message
    assert "\n" not in message


def test_core_binding_names_its_choices():
    assert load_config(None, []).train.bind_cores == "horovod"
    assert load_config(None, ["train.bind_cores=all"]).train.bind_cores == "all"
    assert load_config(None, ["train.bind_cores=none"]).train.bind_cores == "none"
    with pytest.raises(UserError, match=r"train\.bind_cores \('True'\) must be one of horovod, all, none"):
        load_config(None, ["train.bind_cores=on"])


def test_an_unknown_shared_memory_barrier_names_the_choices():
    with pytest.raises(UserError, match=r"train\.shared_memory_barrier \('tcp'\) must be 'pipes' or 'backend'"):
        load_config(None, ["train.shared_memory_barrier=tcp"])
    assert load_config(None, ["train.shared_memory_barrier=backend"]).train.shared_memory_barrier == "backend"


def test_invalid_yaml_is_one_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML") as info:
        load_config(path)
    assert "\n" not in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(tmp_path / "nope.yaml")


def test_override_without_equals():
    with pytest.raises(UserError, match="section.key=value"):
        load_config(None, ["train.max_steps"])


def test_nested_spark_settings_are_flattened_to_dotted_keys(tmp_path):
    config = load_config(None, ["spark.conf.spark.sql.shuffle.partitions=7"])
    assert config.spark.conf == {"spark.sql.shuffle.partitions": "7"}
    # issue 12: the YAML dump (horovodrun's config file, emr submit's) used to raise here
    dumped = tmp_path / "dumped.yaml"
    dumped.write_text(to_yaml(config))
    assert load_config(dumped).spark.conf == {"spark.sql.shuffle.partitions": "7"}


def test_the_generate_section_repeats_each_sampling_setting_with_its_default():
    """GenerateConfig is the config's face of Sampling (an OmegaConf section cannot hold
    its tuple): the same names and defaults, and `sampling()` carries each value over."""
    import dataclasses

    from horovod_llm.config import GenerateConfig
    from horovod_llm.inference.sampling import Sampling

    section = {f.name: f for f in dataclasses.fields(GenerateConfig) if f.name != "prompt"}
    assert section.keys() == {f.name for f in dataclasses.fields(Sampling)}
    assert GenerateConfig().sampling() == Sampling()
    changed = load_config(
        None, ["generate.temperature=0.3", "generate.top_k=7", "generate.top_p=0.5", "generate.seed=9", "generate.max_new_tokens=11", "generate.stop=[END]"]
    )
    assert changed.generate.sampling() == Sampling(max_new_tokens=11, temperature=0.3, top_k=7, top_p=0.5, seed=9, stop=("END",))

"""dlspark.config: YAML layering, --set overrides, strict typing, validation messages, hashing."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from dlspark.config import (
    AppConfig,
    ConfigError,
    SparkConfig,
    SplitConfig,
    apply_override,
    config_hash,
    deep_merge,
    load_config,
    to_dict,
)
from dlspark.config.typed import build

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A conf/ folder where every layer sets what the layer below set, and one key more."""
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "base.yaml").write_text(
        "run: {name: base}\nspark: {app_name: base, shuffle_partitions: 1, conf: {spark.a: base}}\n"
        "paths: {data_dir: base}\n"
    )
    (tmp_path / "pipelines" / "demo.yaml").write_text(
        "run: {name: pipeline}\nspark: {app_name: pipeline, shuffle_partitions: 2}\npaths: {data_dir: pipeline}\n"
    )
    (tmp_path / "profiles" / "dev.yaml").write_text(
        "spark: {app_name: profile, shuffle_partitions: 3, conf: {spark.b: profile}}\npaths: {data_dir: profile}\n"
    )
    (tmp_path / "extra.yaml").write_text("spark: {shuffle_partitions: 4}\npaths: {data_dir: extra}\n")
    return tmp_path


def load(conf_dir: Path, **kwargs) -> AppConfig:
    return load_config(profile="dev", pipeline="demo", conf_dir=conf_dir, **kwargs)


def test_layers_apply_in_order_base_pipeline_profile_conf_set(conf_dir):
    cfg = load(conf_dir, extra_files=[str(conf_dir / "extra.yaml")], overrides=["spark.shuffle_partitions=5"])
    assert cfg.run.name == "pipeline"
    assert cfg.spark.app_name == "profile"
    assert cfg.paths.data_dir == "extra"
    assert cfg.spark.shuffle_partitions == 5


def test_nested_mappings_merge_instead_of_replacing(conf_dir):
    assert load(conf_dir).spark.conf == {"spark.a": "base", "spark.b": "profile"}
    assert deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}, "b": 4}) == {"a": {"x": 1, "y": 3}, "b": 4}


def test_repo_profile_and_pipeline_layers():
    cfg = load_config(profile="standalone", pipeline="ingest_images", conf_dir=REPO / "conf")
    assert cfg.spark.master == "spark://127.0.0.1:7077"
    assert cfg.spark.conf["spark.driver.host"] == "127.0.0.1"
    assert cfg.ingest_images.size == (28, 28)
    assert cfg.ingest_images.color_mode == "L"


def test_set_values_are_parsed_as_yaml(conf_dir):
    cfg = load(conf_dir, overrides=[
        "ingest_images.size=[64, 32]",
        "spark.executor_cores=3",
        "spark.ui_enabled=false",
        "ingest_text.label_column=null",
        "ingest_text.split.salt=v2",
        "spark.task_gpus=1",
        "spark.executor_gpus=1",
    ])
    assert cfg.ingest_images.size == (64, 32)
    assert cfg.spark.executor_cores == 3
    assert cfg.spark.ui_enabled is False
    assert cfg.ingest_text.label_column is None
    assert cfg.ingest_text.split.salt == "v2"
    assert cfg.spark.task_gpus == 1.0 and isinstance(cfg.spark.task_gpus, float)


def test_set_reaches_dotted_spark_conf_keys_as_strings(conf_dir):
    cfg = load(conf_dir, overrides=["spark.conf.spark.sql.ansi.enabled=true", "spark.conf.spark.a=set"])
    assert cfg.spark.conf == {"spark.a": "set", "spark.b": "profile", "spark.sql.ansi.enabled": "true"}


def test_set_later_override_wins_and_input_is_not_mutated():
    data = {"spark": {"master": "local[1]"}}
    out = apply_override(apply_override(data, "spark.master=local[2]"), "spark.master=local[3]")
    assert out == {"spark": {"master": "local[3]"}}
    assert data == {"spark": {"master": "local[1]"}}


@pytest.mark.parametrize("item", ["spark.master", "=3", "spark..master=1", "spark.master=[1, 2"])
def test_malformed_set_is_rejected_with_the_expected_form(item):
    with pytest.raises(ConfigError, match="--set"):
        apply_override({}, item)


def test_set_through_a_value_names_the_value():
    with pytest.raises(ConfigError, match="spark.master is a value, not a section"):
        apply_override({"spark": {"master": "local"}}, "spark.master.x=1")


def test_unknown_key_names_dotted_key_and_suggests_close_match(conf_dir):
    with pytest.raises(ConfigError) as err:
        load(conf_dir, overrides=["spark.shuffle_partitons=3"])
    assert str(err.value).startswith("spark.shuffle_partitons: unknown key")
    assert "did you mean 'shuffle_partitions'?" in str(err.value)


def test_unknown_nested_key_in_yaml_names_full_path(tmp_path):
    (tmp_path / "bad.yaml").write_text("ingest_text:\n  split: {train: 0.8, val: 0.1, tset: 0.1}\n")
    with pytest.raises(ConfigError, match=r"^ingest_text\.split\.tset: unknown key; did you mean 'test'\?"):
        load_config(conf_dir=REPO / "conf", extra_files=[str(tmp_path / "bad.yaml")])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("spark.shuffle_partitions=three", "spark.shuffle_partitions: expected int, got str 'three'"),
        ("spark.ui_enabled=1", "spark.ui_enabled: expected bool, got int 1"),
        ("spark.executor_cores=true", "spark.executor_cores: expected int, got boolean True"),
        ("ingest_images.size=[28]", "ingest_images.size: expected a list of 2 values, got 1"),
        ("spark.deploy_mode=server", "spark.deploy_mode: got 'server'; choose one of 'client', 'cluster'"),
        ("spark.driver_memory=lots", "spark.driver_memory: 'lots' is not a JVM memory size"),
    ],
)
def test_wrong_type_or_value_names_key_and_received_value(item, message):
    with pytest.raises(ConfigError) as err:
        load_config(conf_dir=REPO / "conf", overrides=[item])
    assert message in str(err.value)


def test_split_fractions_must_sum_to_one():
    assert SplitConfig(train=0.7, val=0.2, test=0.1).train == 0.7
    with pytest.raises(ConfigError, match=r"must be 1\.0, got 0\.7000"):
        SplitConfig(train=0.5, val=0.1, test=0.1)


def test_split_error_from_yaml_names_its_section():
    with pytest.raises(ConfigError, match=r"^ingest_text\.split: train \+ val \+ test must be 1\.0"):
        load_config(conf_dir=REPO / "conf", overrides=["ingest_text.split.train=0.5"])
    with pytest.raises(ConfigError, match=r"^ingest_images\.split\.train: fractions must lie in \[0, 1\]"):
        load_config(conf_dir=REPO / "conf", overrides=["ingest_images.split.train=1.5"])


@pytest.mark.parametrize("key", ["spark.hadoop.fs.s3a.secret.key", "spark.my.password", "spark.fs.s3a.access.key"])
def test_secret_like_spark_conf_key_is_rejected(key):
    with pytest.raises(ConfigError) as err:
        load_config(conf_dir=REPO / "conf", overrides=[f"spark.conf.{key}=x"])
    assert str(err.value).startswith(f"spark.conf.{key}: credentials do not belong in config files")
    assert "environment variables" in str(err.value)


def test_task_gpus_without_executor_gpus_says_what_to_set():
    with pytest.raises(ConfigError, match="set spark.executor_gpus too"):
        SparkConfig(task_gpus=1.0)


def test_missing_profile_lists_available_ones():
    with pytest.raises(ConfigError) as err:
        load_config(profile="prod", conf_dir=REPO / "conf")
    assert "profile 'prod': no such file" in str(err.value)
    assert "available: connect, k8s, local, standalone, yarn" in str(err.value)


def test_missing_pipeline_and_conf_file_are_named(tmp_path):
    with pytest.raises(ConfigError, match="pipeline 'nope': no such file .*available: .*ingest_images"):
        load_config(pipeline="nope", conf_dir=REPO / "conf")
    with pytest.raises(ConfigError, match="--conf file: no such file"):
        load_config(conf_dir=REPO / "conf", extra_files=[str(tmp_path / "absent.yaml")])


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping of sections, got list"):
        load_config(conf_dir=REPO / "conf", extra_files=[str(tmp_path / "list.yaml")])


def test_conf_dir_from_environment(conf_dir, monkeypatch):
    monkeypatch.setenv("DLSPARK_CONF_DIR", str(conf_dir))
    assert load_config(profile="dev").spark.app_name == "profile"


def test_config_is_frozen():
    cfg = load_config(conf_dir=REPO / "conf")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.spark.master = "yarn"  # type: ignore[misc]


def test_config_hash_is_stable_and_tracks_values():
    first = config_hash(load_config(pipeline="ingest_text", conf_dir=REPO / "conf"))
    again = config_hash(load_config(pipeline="ingest_text", conf_dir=REPO / "conf"))
    changed = config_hash(load_config(pipeline="ingest_text", conf_dir=REPO / "conf", overrides=["ingest_text.max_length=65"]))
    assert first == again
    assert changed != first
    assert len(first) == 16 and int(first, 16) >= 0


def test_to_dict_round_trips_through_build():
    cfg = load_config(profile="k8s", pipeline="ingest_images", conf_dir=REPO / "conf", overrides=["ingest_text.labels=[a, b]"])
    data = to_dict(cfg)
    assert data["ingest_images"]["size"] == [28, 28]
    assert data["ingest_text"]["labels"] == ["a", "b"]
    assert build(AppConfig, data) == cfg
    assert config_hash(build(AppConfig, data)) == config_hash(cfg)

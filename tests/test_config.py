"""Typed configs: YAML + dotted overrides, errors naming the field, stable hashing."""

from __future__ import annotations

import pytest

from data_pipeline.config import PipelineConfig, load_pipeline_config
from pretrain.core.config import ConfigError, config_hash, dump_yaml, load_config


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("output_dir: out\ninput:\n  paths: [a, b]\nlanguage:\n  languages: [en, fr]\n")
    cfg = load_pipeline_config(
        path, ["language.min_score=0.9", "exact_dedup.num_partitions=3", "normalize.enabled=false"]
    )
    assert cfg.input.paths == ["a", "b"]
    assert cfg.language.languages == ["en", "fr"]
    assert cfg.language.min_score == 0.9
    assert cfg.exact_dedup.num_partitions == 3
    assert cfg.normalize.enabled is False
    assert [name for name, _ in cfg.stage_configs()] == ["language", "quality", "pii", "toxicity"]


def test_yaml_round_trip_gives_same_hash(tmp_path):
    cfg = load_pipeline_config(None, ["input.paths=[x]", "language.min_score=0.5"])
    path = tmp_path / "dump.yaml"
    path.write_text(dump_yaml(cfg))
    again = load_config(PipelineConfig, path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(load_pipeline_config(None, ["language.min_score=0.6"])) != config_hash(cfg)


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("language.min_score=1.5", "language.min_score=1.5"),
        ("language.min_score=abc", "language.min_score='abc'"),
        ("exact_dedup.num_partitions=0", "exact_dedup.num_partitions=0"),
        ("normalize.form=NFX", "normalize.form='NFX'"),
        ("language.backend=cld3", "language.backend='cld3'"),
        ("ray.max_in_flight=-1", "ray.max_in_flight=-1"),
        ("batch_rows=0", "batch_rows=0"),
        ("normalize.enabled=maybe", "normalize.enabled='maybe'"),
    ],
)
def test_bad_values_name_the_field(override, needle):
    with pytest.raises(ConfigError) as err:
        load_pipeline_config(None, [override])
    assert needle in str(err.value), str(err.value)


def test_unknown_key_lists_allowed():
    with pytest.raises(ConfigError, match=r"unknown config key language\.langs.*accepts: .*languages"):
        load_pipeline_config(None, ["language.langs=[en]"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_pipeline_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("input: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_pipeline_config(bad)


def test_list_index_overrides():
    from pretrain.core.config import apply_overrides

    data = {"phases": [{"seq_len": 128}, {"seq_len": 256}], "a": 1}
    apply_overrides(data, ["phases.1.seq_len=512", "b.c=2"])
    assert data == {"phases": [{"seq_len": 128}, {"seq_len": 512}], "a": 1, "b": {"c": 2}}
    with pytest.raises(ConfigError, match="'5' is not an index of a 2-item list"):
        apply_overrides(data, ["phases.5.seq_len=1"])
    with pytest.raises(ConfigError, match="a is not a section"):
        apply_overrides(data, ["a.x=1"])

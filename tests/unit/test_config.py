"""Settings: defaults, YAML, environment overrides, clear errors, documented files."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import yaml

from core.settings import ConfigError, Settings, load_settings

REPO = Path(__file__).resolve().parents[2]


def _keys(d: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("conf", "category_weights"):
            out |= _keys(v, f"{prefix}{k}.")
        else:
            out.add(prefix + k)
    return out


def test_embedded_defaults_need_no_file(tmp_path):
    s = load_settings(environ={})
    assert s.spark.master == "local[*]"
    assert s.home == Path(".persona")
    assert s.table("bronze.events").endswith(".persona/warehouse/bronze/events")
    assert s.model_dir("encoder", "v1").parts[-3:] == ("models", "encoder", "v1")


def test_precedence_file_then_env_then_home(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("spark:\n  master: spark://a:7077\n  shuffle_partitions: 3\nhome: /from/file\n")
    env = {"PERSONA__SPARK__SHUFFLE_PARTITIONS": "5", "PERSONA_HOME": "/from/env"}
    s = load_settings(f, environ=env)
    assert (s.spark.master, s.spark.shuffle_partitions, str(s.home)) == ("spark://a:7077", 5, "/from/env")
    assert str(load_settings(f, home="/from/flag", environ=env).home) == "/from/flag"


def test_object_store_warehouse(tmp_path):
    s = load_settings(environ={"PERSONA__WAREHOUSE": "s3a://bucket/persona/warehouse/"})
    assert s.table("gold.user_profiles") == "s3a://bucket/persona/warehouse/gold/user_profiles"


@pytest.mark.parametrize(
    "content, message",
    [("spark: [1, 2", "not valid YAML"), ("- a\n- b\n", "mapping"), ("spark:\n  nope: 1\n", "invalid setting spark.nope")],
)
def test_bad_files_are_one_line_errors(tmp_path, content, message):
    f = tmp_path / "c.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError, match=message) as exc:
        load_settings(f, environ={})
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.yaml", environ={})


def test_bad_env_value_is_a_clear_error():
    with pytest.raises(ConfigError, match="spark.shuffle_partitions"):
        load_settings(environ={"PERSONA__SPARK__SHUFFLE_PARTITIONS": "many"})


@pytest.mark.parametrize("name", ["local.yaml", "cluster.example.yaml"])
def test_conf_files_show_every_setting_and_load(name):
    data = yaml.safe_load((REPO / "conf" / name).read_text())
    documented = _keys(data)
    expected = _keys(Settings().model_dump(mode="json"))
    assert documented == expected, f"conf/{name} out of date: missing {expected - documented}, extra {documented - expected}"
    load_settings(REPO / "conf" / name, environ={})


def test_vocabulary_caps_renamed_old_keys_still_work_and_warn(tmp_path):
    """encoder.item_buckets / category_buckets were vocabulary caps, not hash buckets:
    the new keys are item_vocab_size / category_vocab_size; the old ones still load."""
    f = tmp_path / "c.yaml"
    f.write_text("encoder:\n  item_vocab_size: 300\n  category_vocab_size: 40\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new keys say nothing
        new = load_settings(f, environ={})
    assert (new.encoder.item_vocab_size, new.encoder.category_vocab_size) == (300, 40)

    f.write_text("encoder:\n  item_buckets: 300\n  category_buckets: 40\n")
    with pytest.warns(FutureWarning) as caught:
        old = load_settings(f, environ={})
    assert old.encoder == new.encoder
    assert [str(w.message).split(",")[0] for w in caught] == [
        "setting encoder.item_buckets is deprecated", "setting encoder.category_buckets is deprecated"]
    assert "use encoder.item_vocab_size" in str(caught[0].message) and "\n" not in str(caught[0].message)
    with pytest.warns(FutureWarning, match="category_buckets"):
        env = load_settings(environ={"PERSONA__ENCODER__CATEGORY_BUCKETS": "40"})
    assert env.encoder.category_vocab_size == 40
    assert "item_buckets" not in Settings().model_dump()["encoder"]

    f.write_text("encoder:\n  item_buckets: 300\n  item_vocab_size: 300\n")
    with pytest.raises(ConfigError, match="keep item_vocab_size only"):
        load_settings(f, environ={})

"""Strict, frozen, keyword-only configs: JSON round trips, unknown keys, types, presets."""

import dataclasses
import json

import pytest

from tessera.config import (
    DataConfig,
    ShapesConfig,
    TokenizerConfig,
    preset,
    preset_kinds,
    preset_names,
)
from tessera.errors import ConfigError

ALL = [DataConfig, ShapesConfig, TokenizerConfig]


@pytest.mark.parametrize("cls", ALL)
def test_json_round_trip_is_exact(cls, tmp_path):
    cfg = cls()
    path = tmp_path / "c.json"
    cfg.to_json(path)
    again = cls.from_json(path)
    assert again == cfg
    assert json.loads(path.read_text())["kind"] == cls.kind


@pytest.mark.parametrize("cls", ALL)
def test_frozen_and_keyword_only(cls):
    cfg = cls()
    field = dataclasses.fields(cfg)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, field, getattr(cfg, field))
    with pytest.raises(TypeError):
        cls(1)  # positional arguments are not accepted


def test_unknown_key_is_named():
    with pytest.raises(ConfigError, match="unknown key 'sise'"):
        ShapesConfig.from_dict({"sise": 64})


def test_wrong_kind_is_refused():
    text = ShapesConfig().to_json()
    with pytest.raises(ConfigError, match="kind 'shapes', expected 'tokenizer'"):
        TokenizerConfig.from_json(text)


@pytest.mark.parametrize(
    ("cls", "data", "msg"),
    [
        (ShapesConfig, {"size": 60}, "multiple of 8"),
        (ShapesConfig, {"size": "64"}, "expected an integer"),
        (ShapesConfig, {"size": True}, "expected an integer"),
        (ShapesConfig, {"held_out": ["pink circle"]}, "is not '<color> <shape>'"),
        (ShapesConfig, {"held_out": "green triangle"}, "expected a list"),
        (DataConfig, {"min_aspect": 2.0}, "min_aspect"),
        (TokenizerConfig, {"dropout": 1.5}, "dropout"),
        (TokenizerConfig, {"vocab_size": 100}, "vocab_size"),
    ],
)
def test_invalid_values_give_one_line_errors(cls, data, msg):
    with pytest.raises(ConfigError, match=msg) as e:
        cls.from_dict(data)
    assert "\n" not in str(e.value)


def test_json_lists_become_tuples_and_ints_become_floats():
    cfg = ShapesConfig.from_dict({"held_out": ["red circle"], "p_two_objects": 1})
    assert cfg.held_out == ("red circle",)
    assert isinstance(cfg.p_two_objects, float)
    assert hash(cfg) == hash(ShapesConfig(held_out=("red circle",), p_two_objects=1.0))


def test_malformed_json_and_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="invalid JSON"):
        ShapesConfig.from_json(bad)
    with pytest.raises(ConfigError, match="not found"):
        ShapesConfig.from_json(tmp_path / "missing.json")


def test_overrides():
    cfg = ShapesConfig().with_overrides(["size=128", 'held_out=["red square"]'])
    assert cfg.size == 128 and cfg.held_out == ("red square",)
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        ShapesConfig().with_overrides(["nope=1"])
    with pytest.raises(ConfigError, match="key=value"):
        ShapesConfig().with_overrides(["size"])


def test_presets_exist_and_are_valid():
    assert {"data", "shapes", "tokenizer"} <= set(preset_kinds())
    for kind in preset_kinds():
        for name in preset_names(kind):
            cfg = preset(kind, name)
            assert type(cfg).from_json(cfg.to_json()) == cfg
    assert preset("tokenizer", "dalle").vocab_size == 16384
    assert preset("tokenizer", "dalle").max_length == 256
    with pytest.raises(ConfigError, match="unknown shapes preset 'nope'; choose from"):
        preset("shapes", "nope")

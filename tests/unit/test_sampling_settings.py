"""One setting, one place: the sampling settings dataclasses are what the CLI flags, the
server's request schema and the page's inputs are derived from."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from tessera.config import sampling
from tessera.config.sampling import (
    DalleSampling,
    UnclipSampling,
    setting,
    setting_specs,
    settings_class,
)
from tessera.errors import ConfigError


def _parser() -> argparse.ArgumentParser:
    from tessera.cli.generate import add_sampling_flags

    p = argparse.ArgumentParser()
    add_sampling_flags(p)
    return p


def _flags(p: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in p._actions if a.dest != "help"}


@pytest.mark.parametrize("cls", [DalleSampling, UnclipSampling])
def test_every_front_setting_is_a_flag_and_an_api_field(cls) -> None:
    from tessera.apps.serve.app import GenerateRequest

    flags = _flags(_parser())
    schema = GenerateRequest.model_json_schema()["properties"]
    for spec in setting_specs(cls):
        assert spec.help in flags[spec.name].help
        if spec.choices:
            assert tuple(flags[spec.name].choices) == spec.choices
        if spec.serve:
            assert spec.help in schema[spec.name]["description"]
        else:
            assert spec.name not in schema  # the operator's (compile)
    hidden = [f.name for f in dataclasses.fields(cls) if not f.metadata["front"]]
    assert all(name not in flags and name not in schema for name in hidden)


def test_adding_a_setting_is_one_edit(monkeypatch) -> None:
    """A new field on the dataclass reaches the CLI, the API schema and the page's specs."""
    from tessera.apps.serve import app as app_module

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class WithMore(DalleSampling):
        smoothing: float = setting(0.5, "a new knob, for this test", ge=0, le=1)

    monkeypatch.setitem(sampling._BY_PIPELINE, "dalle", WithMore)
    assert "smoothing" in _flags(_parser())
    fields = app_module._sampling_fields()
    assert fields["smoothing"][1].description.endswith("a new knob, for this test")
    assert [s.name for s in setting_specs(WithMore)][-1] == "smoothing"
    with pytest.raises(ConfigError, match="smoothing must be <= 1, got 2"):
        WithMore(smoothing=2.0)


def test_bounds_and_choices_are_checked_on_construction() -> None:
    with pytest.raises(ConfigError, match="top_p must be > 0"):
        DalleSampling(top_p=0.0)
    with pytest.raises(ConfigError, match="decoder_sampler"):
        UnclipSampling(decoder_sampler="euler")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="compile needs use_cache"):
        DalleSampling(compile=True, use_cache=False)
    assert settings_class("unclip").aliases["guidance"] == "decoder_guidance"
    with pytest.raises(ConfigError, match="no sampling settings"):
        settings_class("vqgan")

"""``tessera serve`` on the command line: its help, the one-line answer when the [serve]
extra is missing, a bad --model, and the config's own checks."""

from __future__ import annotations

import importlib.util

import pytest

from tessera.apps.serve import ServeConfig
from tessera.cli.main import main
from tessera.errors import ConfigError


def test_help_lists_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["serve", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--host", "--port", "--model", "--max-body-bytes", "--queue-size", "--timeout"):
        assert flag in out


def test_missing_extra_is_a_one_line_error(monkeypatch, capsys) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "fastapi" else real(name, *a)
    )
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install -e '.[serve]'" in err and "fastapi" in err


def test_bad_model_folder_is_a_one_line_error(tmp_path, capsys) -> None:
    pytest.importorskip("fastapi", reason="needs the [serve] extra: pip install -e '.[serve]'")
    assert main(["serve", "--model", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pipeline checkpoint not found" in err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"models": ()}, "at least one --model"),
        ({"models": ("dalle", "dalle")}, "named twice"),
        ({"max_n": 0}, "max_n must be >= 1"),
        ({"max_n": 8, "max_candidates": 4}, "max_candidates must be >= max_n"),
        ({"queue_size": -1}, "queue_size >= 0"),
        ({"port": 70000}, "port must be in"),
    ],
)
def test_config_checks(kwargs, message) -> None:
    with pytest.raises(ConfigError, match=message):
        ServeConfig(**kwargs)


def test_defaults_bind_localhost_and_serve_the_shipped_model() -> None:
    c = ServeConfig()
    assert c.host == "127.0.0.1" and c.models == ("dalle",)

"""Shipped names ("dalle", "unclip") and pipeline folders mean the same in every entry point:
``tessera.load_pipeline`` (the one place names are resolved), ``generate``, ``serve``,
``demo``, ``eval``, ``variations`` / ``interpolate`` / ``textdiff``.

The real shipped folders are loaded where loading is all a test needs; the commands that
generate run on tiny random-weight stand-ins put where the shipped folders are looked up
(``tessera.checkpoint.shipped_dir``), so the names still go through the one resolver."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datafixtures import build_coco
from helpers.serve import build_tiny_pipeline, build_tiny_unclip_pipeline
from tessera.checkpoint import shipped_dir
from tessera.cli.main import main
from tessera.errors import CheckpointError, ConfigError
from tessera.pipelines import load_pipeline, pipeline_kind, resolve_pipeline


@pytest.fixture(scope="module")
def tiny_shipped(tmp_path_factory) -> Path:
    """A stand-in for tessera/assets/shapes: tiny DALL·E in ``pipeline/``, tiny unCLIP in
    ``unclip/``, and an input image."""
    root = tmp_path_factory.mktemp("shipped")
    build_tiny_pipeline(root / "pipeline")
    build_tiny_unclip_pipeline(root / "unclip")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(root / "a.png")
    return root


@pytest.fixture()
def shipped(tiny_shipped, monkeypatch) -> Path:
    import tessera.checkpoint

    monkeypatch.setattr(tessera.checkpoint, "shipped_dir", tiny_shipped.joinpath)
    return tiny_shipped


# -- the resolver and the library ----------------------------------------------------------


def test_names_resolve_to_the_shipped_folders_and_paths_stay_paths(tmp_path) -> None:
    assert resolve_pipeline("dalle") == shipped_dir("pipeline")
    assert resolve_pipeline("unclip") == shipped_dir("unclip")
    assert resolve_pipeline(Path("unclip")) == Path("unclip")  # a Path is never a name
    assert resolve_pipeline("./unclip") == Path("unclip")
    assert resolve_pipeline(str(tmp_path)) == tmp_path
    assert pipeline_kind("dalle") == "dalle" and pipeline_kind("unclip") == "unclip"


def test_library_loads_both_shipped_names() -> None:
    import tessera

    dalle, unclip = tessera.load_pipeline("dalle"), tessera.load_pipeline("unclip")
    assert dalle.kind == "dalle" and unclip.kind == "unclip"
    assert unclip.image_size == 128


def test_a_missing_shipped_pipeline_and_a_wrong_option_are_one_line_errors(
    tmp_path, monkeypatch, shipped
) -> None:
    import tessera.checkpoint

    monkeypatch.setattr(tessera.checkpoint, "shipped_dir", (tmp_path / "none").joinpath)
    with pytest.raises(CheckpointError, match="shipped unCLIP pipeline is not installed"):
        load_pipeline("unclip")
    monkeypatch.setattr(tessera.checkpoint, "shipped_dir", shipped.joinpath)
    with pytest.raises(ConfigError, match="clip: not an option of a unclip pipeline"):
        load_pipeline("unclip", clip=str(shipped / "pipeline" / "clip"))


# -- serve -----------------------------------------------------------------------------------


def test_serve_loads_both_shipped_models_under_their_names(monkeypatch) -> None:
    pytest.importorskip("fastapi", reason="needs the [serve] extra: pip install -e '.[serve]'")
    import tessera.apps.serve as serve_pkg

    served = []

    def fake_serve(config, *, log_level="info"):  # build the app, do not listen
        served.append(serve_pkg.create_app(config))

    monkeypatch.setattr(serve_pkg, "serve", fake_serve)
    assert main(["serve", "--model", "dalle", "--model", "unclip", "--port", "0"]) == 0
    assert main(["serve", "--model", "unclip", "--port", "0"]) == 0
    both, alone = (app.state.models for app in served)
    assert list(both) == ["dalle", "unclip"] and list(alone) == ["unclip"]
    assert [p.kind for p in both.values()] == ["dalle", "unclip"]


def test_serve_names_a_folder_by_its_name(tiny_shipped) -> None:
    pytest.importorskip("fastapi", reason="needs the [serve] extra: pip install -e '.[serve]'")
    from tessera.apps.serve.service import load_models

    models = load_models([str(tiny_shipped / "unclip"), "unclip"])
    assert list(models) == ["unclip", "unclip-2"]  # the folder's name, made unique


# -- generate (one behaviour for an overlong prompt, both kinds) -----------------------------


@pytest.mark.parametrize("name", ["dalle", "unclip"])
def test_generate_takes_the_name_and_cuts_an_overlong_prompt_with_a_warning(
    shipped, tmp_path, caplog, name
) -> None:
    long = "a red circle above a blue square " * 8
    out = tmp_path / "gen"
    argv = ["generate", "a red circle", long, "--model", name, "--n", "1", "--guidance", "2"]
    with caplog.at_level(logging.WARNING, logger="tessera.text"):
        assert main([*argv, "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    guidance = "guidance" if name == "dalle" else "decoder_guidance"  # --guidance: generic
    assert all(x[guidance] == 2.0 for x in lines)
    room = load_pipeline(name).max_prompt_tokens
    assert f"1 prompt(s) longer than the model's {room} text tokens were cut" in caplog.text


def test_generate_guidance_and_the_unclip_flag_must_agree(shipped, tmp_path, capsys) -> None:
    argv = ["generate", "a", "--model", "unclip", "--guidance", "2", "--decoder-guidance", "3"]
    assert main([*argv, "--out", str(tmp_path)]) == 2
    assert "--guidance sets --decoder-guidance" in capsys.readouterr().err


# -- variations / interpolate / textdiff -------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["variations", "{a}", "--n", "1", "--model", "unclip"],
        ["variations", "{a}", "--n", "1"],  # the default is the shipped name
        ["interpolate", "{a}", "{a}", "--steps", "2", "--model", "unclip"],
        ["textdiff", "{a}", "--from", "a red circle", "--to", "a blue circle", "--steps", "2"],
    ],
    ids=["variations", "variations-default", "interpolate", "textdiff"],
)
def test_manipulations_take_the_shipped_name(shipped, tmp_path, argv) -> None:
    argv = [a.format(a=shipped / "a.png") for a in argv]
    assert main([*argv, "--out", str(tmp_path / "o")]) == 0
    lines = [json.loads(x) for x in (tmp_path / "o" / "manifest.jsonl").read_text().splitlines()]
    assert all(x["model"] == str(shipped / "unclip") for x in lines)


def test_manipulations_refuse_the_dalle_name(shipped, tmp_path, capsys) -> None:
    argv = ["variations", str(shipped / "a.png"), "--model", "dalle", "--out", str(tmp_path)]
    assert main(argv) == 2
    assert "image manipulations need unCLIP" in capsys.readouterr().err


# -- demo and eval ---------------------------------------------------------------------------


def test_demo_takes_either_name(shipped, tmp_path) -> None:
    common = ["--candidates", "1", "--keep", "1"]
    assert main(["demo", "--model", "unclip", *common, "--out", str(tmp_path / "u")]) == 0
    summary = json.loads((tmp_path / "u" / "summary.json").read_text())
    assert summary["model"] == "unclip" and summary["image_prompt"] is False
    assert not (tmp_path / "u" / "image_prompt.png").exists()
    assert len((tmp_path / "u" / "manifest.jsonl").read_text().splitlines()) == 8
    assert main(["demo", "--model", "dalle", *common, "--out", str(tmp_path / "d")]) == 0
    summary = json.loads((tmp_path / "d" / "summary.json").read_text())
    assert summary["model"] == "dalle" and "unclip_checker_pass" in summary  # both, side by side
    assert (tmp_path / "d" / "image_prompt.png").is_file()
    # one example of each unCLIP edit, a row each (with the unCLIP demo and beside DALL·E)
    for run in ("u", "d"):
        rows = json.loads((tmp_path / run / "summary.json").read_text())["edits"]["rows"]
        assert list(rows) == ["variations", "interpolation", "text diff", "inpainting"]
        edits = Image.open(tmp_path / run / "edits.png")
        assert edits.width > 5 * 32 and edits.height > 4 * 32
    grid = Image.open(tmp_path / "d" / "grid.png")  # labelled: a label column, a row a prompt
    assert grid.width > 160 and grid.height > 8 * 32


def test_eval_protocol_takes_the_name(shipped, tmp_path) -> None:
    data = build_coco(tmp_path / "coco", n=4)
    argv = ["eval", "coco", "--data", str(data), "--model", "unclip", "--n", "30"]
    argv += ["--image-size", "32", "--features", f"clip:{shipped / 'unclip' / 'clip'}"]
    assert main([*argv, "--no-progress", "--out", str(tmp_path / "out")]) == 0
    m = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert m["model"] == "unclip" and m["n_generated"] == 3

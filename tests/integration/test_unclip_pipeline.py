"""``tessera train --preset tiny-unclip --install`` -> an unCLIP pipeline folder, loaded by the
one ``load_pipeline`` and used by ``tessera generate --model`` and ``tessera eval fidelity``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.cli.main import main


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("unclip")
    argv = ["train", "--preset", "tiny-unclip", "--run-dir", str(root / "run")]
    assert main([*argv, "--install", str(root / "dest"), "--no-progress"]) == 0
    return root


def test_the_recipe_trains_every_stage_and_rerunning_skips_them(installed, capsys) -> None:
    run = installed / "run"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["preset"] == "tiny-unclip"
    stages = ["tokenizer", "clip", "prior", "ar_prior", "decoder", "upsampler_1"]
    assert list(summary["stages"]) == stages
    for stage in stages[1:]:
        assert (run / stage / "final" / "config.json").is_file()
    assert main(["train", "--preset", "tiny-unclip", "--run-dir", str(run), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert out.count("done already") == len(stages)


def test_the_installed_folder_is_an_unclip_pipeline(installed) -> None:
    from tessera.pipelines import load_pipeline
    from tessera.pipelines.base import TextToImage, read_index

    folder = installed / "dest" / "unclip"
    index = read_index(folder)
    assert index.pipeline == "unclip"
    assert {r: c.kind for r, c in index.components.items()} == {
        "tokenizer": "tokenizer",
        "clip": "clip",
        "prior": "prior",
        "ar_prior": "ar_prior",
        "decoder": "decoder",
        "upsampler_1": "upsampler",
    }
    meta = json.loads((folder / "decoder" / "config.json").read_text())
    assert meta["kind"] == "decoder"
    pipe = load_pipeline(folder)
    assert isinstance(pipe, TextToImage) and pipe.kind == "unclip"
    assert pipe.image_size == 64 and set(pipe.priors) == {"diffusion", "ar"}
    assert all(p.dtype == torch.float32 for p in pipe.decoder.parameters())  # fp16 on disk only
    a = pipe.generate(["a red circle"], n=2, seed=3)
    b = pipe.generate(["a red circle"], n=2, seed=3)
    assert a.images.shape == (2, 3, 64, 64) and torch.equal(a.images, b.images)
    assert a.scores is not None  # n > 1: reranked by the pipeline's CLIP
    c = pipe.generate(["a red circle"], n=2, seed=4)
    assert not torch.equal(a.images, c.images)


def test_generate_with_both_priors_and_eval_fidelity(installed, tmp_path) -> None:
    folder = str(installed / "dest" / "unclip")
    out = tmp_path / "gen"
    argv = ["generate", "a red circle", "a blue square", "--model", folder, "--out", str(out)]
    assert main([*argv, "--candidates", "2", "--keep", "1"]) == 0
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 2
    img = np.asarray(Image.open(out / lines[0]["file"]))
    assert img.shape == (64, 64, 3)
    out_ar = tmp_path / "gen_ar"
    assert main(["generate", "a red circle", "--model", folder, "--prior-kind", "ar",
                 "--n", "1", "--out", str(out_ar)]) == 0  # fmt: skip
    assert (out_ar / "manifest.jsonl").is_file()
    assert (
        main(["eval", "fidelity", str(out / "manifest.jsonl"), "--out", str(tmp_path / "e")]) == 0
    )
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["n"] == 2


def test_unclip_flags_are_checked_in_one_line(installed, capsys, caplog, tmp_path) -> None:
    folder = str(installed / "dest" / "unclip")
    base = ["generate", "a red circle", "--model", folder, "--out", "/nonexistent/x"]
    assert main([*base, "--temperature", "0.5"]) == 2
    assert "--temperature do(es) not apply to a unclip pipeline" in capsys.readouterr().err
    assert main([*base, "--decoder-steps", "1"]) == 2
    assert "decoder_steps must be >= 2" in capsys.readouterr().err
    assert main([*base, "--vae", folder]) == 2
    assert "--vae and --clip apply to DALL·E pipelines only" in capsys.readouterr().err
    # an overlong prompt is cut with a warning, as for DALL·E (one behaviour for both)
    too_long = " ".join(["a red circle above a blue square"] * 20)
    out = str(tmp_path / "long")
    with caplog.at_level("WARNING", logger="tessera.text"):
        assert main(["generate", too_long, "--model", folder, "--n", "1", "--out", out]) == 0
    assert "longer than the model's" in caplog.text

"""``tessera variations | interpolate | textdiff`` end to end (in-process) on a tiny
random-weight unCLIP pipeline folder: the files, manifests and image sizes they write, and
one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.cli.main import main


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A tiny tokenizer (trained by the CLI), an untrained tiny CLIP, diffusion prior, decoder
    (32 px) and 32 -> 64 upsampler saved as an unCLIP pipeline folder; two input images."""
    from tessera.checkpoint import load
    from tessera.config.presets import preset
    from tessera.models.clip import CLIP
    from tessera.models.decoder import Decoder
    from tessera.models.prior import DiffusionPrior
    from tessera.models.upsampler import Upsampler
    from tessera.pipelines.unclip import save_unclip_pipeline

    root = tmp_path_factory.mktemp("manipulate")
    tok_dir = root / "tok"
    argv = ["tokenizer", "train", "shapes", "--n", "200", "--preset", "tiny"]
    assert main([*argv, "--out", str(tok_dir)]) == 0
    tok = load(tok_dir, kind="tokenizer")
    torch.manual_seed(0)
    save_unclip_pipeline(
        root / "unclip",
        tokenizer=tok,
        clip=CLIP(preset("clip", "tiny")),
        clip_tokenizer=tok,
        priors={"diffusion": DiffusionPrior(preset("prior", "tiny"))},
        decoder=Decoder(preset("decoder", "tiny")),
        upsamplers=[Upsampler(preset("upsampler", "tiny-64"))],
        defaults={"decoder_steps": 3, "upsampler_steps": 2},
    )
    rng = np.random.default_rng(0)
    for name, size in (("a.png", 40), ("b.png", 32)):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    return root


def _run(root, *argv: str) -> int:
    return main([*argv, "--model", str(root / "unclip")])


def _manifest(out) -> list[dict]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


def _sizes(out, files) -> set[tuple[int, int]]:
    return {Image.open(out / f).size for f in files}


def test_variations_writes_n_images_a_grid_and_a_manifest(root) -> None:
    out = root / "var"
    argv = ["variations", str(root / "a.png"), "--n", "3", "--seed", "1"]
    assert _run(root, *argv, "--out", str(out)) == 0
    lines = _manifest(out)
    files = ["input.png", "variation_000.png", "variation_001.png", "variation_002.png"]
    assert [r["file"] for r in lines] == files
    assert [r["kind"] for r in lines] == ["input", "variation", "variation", "variation"]
    assert [r.get("index") for r in lines[1:]] == [0, 1, 2]
    assert all(r["seed"] == 1 and r["eta"] == 1.0 and r["decoder_steps"] == 3 for r in lines)
    assert _sizes(out, files) == {(64, 64)}
    assert (out / "grid.png").is_file() and Image.open(out / "grid.png").width > 4 * 64
    pixels = [np.asarray(Image.open(out / f)) for f in files[1:]]
    assert not np.array_equal(pixels[0], pixels[1])  # eta 1: the variations differ


def test_interpolate_writes_frames_from_a_to_b(root) -> None:
    out = root / "interp"
    argv = ["interpolate", str(root / "a.png"), str(root / "b.png"), "--steps", "3"]
    assert _run(root, *argv, "--out", str(out)) == 0
    lines = _manifest(out)
    frames = [r for r in lines if r["kind"] == "frame"]
    assert [r["file"] for r in lines[:2]] == ["input_a.png", "input_b.png"]
    assert [r["theta"] for r in frames] == [0.0, 0.5, 1.0]
    assert [r["file"] for r in frames] == ["frame_000.png", "frame_001.png", "frame_002.png"]
    assert all(r["eta"] == 0.0 and r["decoder_guidance"] == 1.0 for r in lines)
    assert _sizes(out, [r["file"] for r in lines]) == {(64, 64)}
    assert (out / "strip.png").is_file()


def test_textdiff_writes_frames_up_to_max_theta(root) -> None:
    out = root / "diff"
    argv = ["textdiff", str(root / "a.png"), "--from", "a red circle", "--to", "a blue circle"]
    assert _run(root, *argv, "--steps", "3", "--max-theta", "0.4", "--out", str(out)) == 0
    lines = _manifest(out)
    assert [r["kind"] for r in lines] == ["input", "frame", "frame", "frame"]
    assert [r["theta"] for r in lines[1:]] == [0.0, 0.2, 0.4]
    assert all(r["from"] == "a red circle" and r["to"] == "a blue circle" for r in lines)
    assert _sizes(out, [r["file"] for r in lines]) == {(64, 64)}
    assert (out / "strip.png").is_file()


@pytest.mark.parametrize(("argv", "message"), [
    (["variations", "{root}/nope.png"], "no such image file"),
    (["variations", "{root}/corrupt.png"], "corrupt.png"),
    (["interpolate", "{root}/a.png", "{root}/nope.png"], "no such image file"),
    (["variations", "{root}/a.png", "--model", "{dalle}"], "image manipulations need unCLIP"),
    (["variations", "{root}/a.png", "--model", "{root}/nowhere"], "not found"),
    (["variations", "{root}/a.png", "--model", "{root}/tok"], "not a pipeline folder"),
    (["variations", "{root}/a.png", "--eta", "0"], "--eta in (0, 1]"),
    (["textdiff", "{root}/a.png", "--from", "a", "--to", "{long}"], "longer than"),
    (["textdiff", "{root}/a.png", "--from", "a red circle", "--to", "a red circle"], "same CLIP"),
])  # fmt: skip
def test_bad_input_is_a_one_line_error(root, capsys, argv, message) -> None:
    from tessera.checkpoint import shipped_dir

    subs = {"root": root, "dalle": shipped_dir("pipeline"), "long": "a red circle " * 20}
    argv = [a.format(**subs) for a in argv]
    if "--model" not in argv:
        argv += ["--model", str(root / "unclip")]
    code = main([*argv, "--out", str(root / "bad")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err and len(err.splitlines()) == 1, err
    assert message in err, err


def test_missing_default_model_is_a_one_line_error(root, capsys, monkeypatch) -> None:
    import tessera.checkpoint

    monkeypatch.setattr(tessera.checkpoint, "shipped_dir", lambda *parts: root / "no-unclip")
    code = main(["variations", str(root / "a.png"), "--out", str(root / "bad")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1
    assert "shipped unCLIP pipeline is not installed" in err and "--model DIR" in err


def test_inpaint_writes_ranked_results_that_keep_the_unmasked_pixels(root) -> None:
    mask = np.zeros((40, 40), np.uint8)
    mask[:, 20:] = 255
    Image.fromarray(mask).save(root / "mask.png")
    out = root / "inpaint"
    argv = ["inpaint", str(root / "a.png"), "a red circle", "--mask", str(root / "mask.png")]
    assert _run(root, *argv, "--n", "2", "--seed", "3", "--out", str(out)) == 0
    lines = _manifest(out)
    files = ["input.png", "mask.png", "inpaint_000.png", "inpaint_001.png"]
    assert [r["file"] for r in lines] == files
    scores = [r["clip_score"] for r in lines[2:]]
    assert scores == sorted(scores, reverse=True) and all(r["seed"] == 3 for r in lines)
    assert _sizes(out, files) == {(64, 64)}
    src = np.asarray(Image.open(root / "a.png").resize((64, 64), Image.BILINEAR)).astype(int)
    for f in files[2:]:  # the kept half is the (resized) input's, up to PNG/uint8 rounding
        got = np.asarray(Image.open(out / f)).astype(int)
        assert np.abs(got[:, :30] - src[:, :30]).mean() < 12


@pytest.mark.parametrize(("mask", "message"), [
    ("empty", "the mask is empty"),
    ("small", "the mask must be one plane of the image's size"),
    ("nope", "no such mask file"),
    ("corrupt", "corrupt.png"),
])  # fmt: skip
def test_inpaint_bad_masks_are_one_line_errors(root, capsys, mask, message) -> None:
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "empty.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(root / "small.png")
    path = root / f"{mask}.png"
    argv = ["inpaint", str(root / "a.png"), "x", "--mask", str(path), "--out", str(root / "o")]
    assert _run(root, *argv) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err

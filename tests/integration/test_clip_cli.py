"""``tessera clip train | score`` and ``tessera generate --clip`` end to end on tiny presets
(in-process)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.cli.main import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip")
    tok, run = root / "tok", root / "run"
    argv = ["tokenizer", "train", "shapes", "--n", "200", "--out", str(tok), "--preset", "tiny"]
    assert main(argv) == 0
    argv = ["clip", "train", "--preset", "tiny", "--run-dir", str(run), "--tokenizer", str(tok)]
    assert main([*argv, "--no-progress"]) == 0

    # an untrained tiny DALL-E pipeline to rerank (its samples need not look like anything)
    from tessera import checkpoint
    from tessera.config.presets import preset
    from tessera.models.dalle import DALLE
    from tessera.pipelines.dalle import export_checkpoint
    from tessera.training.stages.vae import STAGE as VAE_STAGE
    from tessera.vae.model import DiscreteVAE

    torch.manual_seed(0)
    vae = DiscreteVAE(VAE_STAGE.presets["tiny"]()[0])
    dalle = DALLE(preset("dalle", "tiny"))
    tokenizer = checkpoint.load(tok, kind="tokenizer")
    export_checkpoint(root / "pipe", model=dalle, vae=vae, tokenizer=tokenizer)
    return root


def test_train_loss_falls_and_exports_the_model_with_its_tokenizer(setup) -> None:
    run = setup / "run"
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 100
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    # the batch of 32 at chance is ln 32 = 3.47 nats; the model must beat it, not collapse to it
    assert last < first - 0.2 and last < math.log(32) - 0.2, (first, last)
    final = run / "final"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {
        p.name for p in final.iterdir()
    }
    assert json.loads((final / "config.json").read_text())["kind"] == "clip"
    from tessera.sampling.rerank import load_scorer

    scorer = load_scorer(final)
    assert scorer.model.config.image_size == 32 and scorer.tokenizer.max_length == 16


def _square(path, rgb) -> str:
    img = np.full((32, 32, 3), 255, np.uint8)
    img[8:24, 8:24] = rgb
    Image.fromarray(img).save(path)
    return str(path)


def test_score_prints_and_writes_every_pair(setup, tmp_path, capsys) -> None:
    final = str(setup / "run" / "final")
    a = _square(tmp_path / "a.png", (220, 30, 30))
    b = _square(tmp_path / "b.png", (30, 30, 220))
    texts = ["a red square", "a blue square"]
    out = tmp_path / "scores.jsonl"
    argv = ["clip", "score", final, a, b, "--text", texts[0], "--text", texts[1]]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(printed) == len(records) == 4
    assert [(r["image"], r["text"]) for r in records] == [(f, t) for f in (a, b) for t in texts]

    from tessera.data.images import load_images
    from tessera.sampling.rerank import load_scorer

    sim = load_scorer(final).similarity(load_images([a, b], 32)[1], texts)
    got = torch.tensor([r["score"] for r in records]).view(2, 2)
    torch.testing.assert_close(got, sim, rtol=0, atol=1e-5)
    assert all(-1 <= r["score"] <= 1 for r in records)


def test_generate_reranks_and_keeps_the_best(setup, tmp_path) -> None:
    clip, pipe = str(setup / "run" / "final"), str(setup / "pipe")
    base = ["generate", "a red circle", "two blue squares", "--model", pipe, "--clip", clip]
    base += ["--candidates", "4", "--seed", "3"]
    assert main([*base, "--out", str(tmp_path / "all")]) == 0
    assert main([*base, "--keep", "1", "--out", str(tmp_path / "best")]) == 0
    every = [json.loads(x) for x in (tmp_path / "all" / "manifest.jsonl").read_text().splitlines()]
    best = [json.loads(x) for x in (tmp_path / "best" / "manifest.jsonl").read_text().splitlines()]
    assert len(every) == 8 and len(best) == 2
    assert all(r["candidates"] == 4 and r["clip"] == clip for r in every + best)
    for p in (0, 1):
        scores = [r["score"] for r in every if r["prompt_index"] == p]
        assert scores == sorted(scores, reverse=True)  # best first
        (kept,) = [r for r in best if r["prompt_index"] == p]
        assert kept["sample"] == 0 and kept["score"] == scores[0]
        # same seed, same candidates: the kept image is the best of the four
        name = f"{p:04d}-000.png"
        assert (tmp_path / "best" / name).read_bytes() == (tmp_path / "all" / name).read_bytes()


def test_generate_without_clip_is_unchanged(setup, tmp_path) -> None:
    out = tmp_path / "plain"
    argv = ["generate", "a red circle", "--model", str(setup / "pipe"), "--n", "2"]
    assert main([*argv, "--out", str(out)]) == 0
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 2 and not any("score" in r or "candidates" in r for r in lines)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "x", "--clip", "{root}/nope"], "checkpoint not found"),
        (["generate", "x", "--clip", "{clip}", "--candidates", "2", "--keep", "3"],
         "--keep must be between 1 and --candidates (2), got 3"),
        (["generate", "x", "--keep", "1"], "--candidates and --keep need --clip"),
        (["generate", "x", "--clip", "{pipe}"], "holds a 'dalle' checkpoint, expected 'clip'"),
        (["clip", "score", "{root}/nope", "a.png", "--text", "x"], "checkpoint not found"),
        (["clip", "train", "--run-dir", "{root}/r"], "clip training needs --tokenizer"),
    ],
)  # fmt: skip
def test_bad_input_is_a_one_line_error(setup, capsys, argv, message) -> None:
    paths = {"root": setup, "clip": setup / "run" / "final", "pipe": setup / "pipe"}
    argv = [a.format(**paths) for a in argv]
    if argv[0] == "generate":
        argv += ["--model", str(setup / "pipe"), "--out", str(setup / "bad")]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0 and "Traceback" not in err
    assert message in err.splitlines()[-1], err

"""``tessera vqgan train`` (tiny preset) and the DALL·E stage trained on shapes with the tiny
VQGAN as its image tokenizer, then ``tessera generate`` from what it exports (in-process)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from tessera import checkpoint
from tessera.cli.main import main
from tessera.config.presets import preset
from tessera.training.stages.vqgan import VQGANTrainee


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vqgan")
    vq_run = root / "vq"
    argv = ["vqgan", "train", "--preset", "tiny", "--run-dir", str(vq_run), "--steps", "6",
            "--checkpoint-every", "3", "--no-progress", "sample_every=3"]  # fmt: skip
    assert main(argv) == 0
    return root, vq_run


def test_vqgan_train_tiny(runs) -> None:
    _, run = runs
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == list(range(1, 7))
    assert {"l1", "perceptual", "codebook", "codes_used"} <= set(lines[0])
    assert lines[-1]["loss"] < lines[0]["loss"]  # L1 + perceptual + commitment falls
    evals = [json.loads(x) for x in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [3, 6] and all(e["heldout_psnr"] > 0 for e in evals)
    model = checkpoint.load(run / "final", kind="vqgan")
    x = torch.rand(2, 3, 32, 32)
    assert model.encode(x).shape == (2, 8, 8) and model.decode(model.encode(x)).shape == x.shape


def test_dalle_trains_on_a_vqgan_and_generates(runs, tmp_path) -> None:
    root, vq_run = runs
    tok, run = root / "tok", root / "dalle"
    argv = ["tokenizer", "train", "shapes", "--n", "200", "--out", str(tok), "--preset", "tiny"]
    assert main(argv) == 0
    vq = str(vq_run / "final")
    argv = ["dalle", "train", "--preset", "tiny", "--run-dir", str(run), "--vae", vq,
            "--tokenizer", str(tok), "--steps", "8", "--no-progress"]  # fmt: skip
    assert main(argv) == 0
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8 and losses[-1] < losses[0]
    final = run / "final"
    assert json.loads((final / "vae" / "config.json").read_text())["kind"] == "vqgan"
    out = tmp_path / "gen"
    argv = ["generate", "a red circle", "--model", str(final), "--n", "2", "--seed", "3",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    files = [json.loads(x)["file"] for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(files) == 2 and all(Image.open(out / f).size == (32, 32) for f in files)


def test_adversarial_loss_reaches_both_sides() -> None:
    """With the GAN term on, the discriminator learns from its hinge loss only and the
    generator from the frozen-discriminator copy only (one optimizer, one backward)."""
    cfg = preset("vqgan", "tiny").replace(adversarial_weight=0.5, perceptual="none")
    model = VQGANTrainee(cfg)
    x = torch.rand(2, 3, 32, 32)
    loss, metrics = model(x, step=0, seed=0)
    assert {"g_loss", "d_loss"} <= set(metrics)
    # the generator's term alone must not move the discriminator
    g_only = -torch.func.functional_call(
        model.discriminator,
        {k: v.detach() for k, v in model.discriminator.named_parameters()},
        (model(x, step=0, seed=0)[0].new_zeros(1, 3, 32, 32).requires_grad_(),),
    ).mean()
    g_only.backward()
    assert all(p.grad is None for p in model.discriminator.parameters())
    loss.backward()
    assert all(p.grad is not None for p in model.discriminator.parameters())
    assert model.decoder.conv_out.weight.grad is not None
    plain = model.release()
    assert not any(k.startswith("discriminator") for k in plain.state_dict())

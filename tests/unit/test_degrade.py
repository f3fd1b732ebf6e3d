"""Corruptions of the upsamplers' conditioning image (Gaussian blur, BSR) and the training
pairs built from them: exact blur values, determinism per generator, identity at prob 0."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from tessera.config.presets import preset
from tessera.data.degrade import bsr_degrade, degrade, gaussian_blur, gaussian_kernel
from tessera.training.stages import upsampler as stage


def _images(b: int = 3, side: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_gaussian_kernel_hand_computed() -> None:
    # size 3, sigma 0.6: taps ∝ [e^(-1/0.72), 1, e^(-1/0.72)]
    e = math.exp(-1 / (2 * 0.36))
    want = torch.tensor([e, 1.0, e]) / (1 + 2 * e)
    torch.testing.assert_close(gaussian_kernel(3, 0.6), want, rtol=0, atol=1e-7)
    for size, sigma in [(3, 0.6), (5, 1.0), (7, 2.5)]:
        k = gaussian_kernel(size, sigma)
        assert k.sum().item() == pytest.approx(1.0, abs=1e-6)
        assert torch.equal(k, k.flip(0)) and k.argmax() == size // 2


def test_blur_keeps_a_constant_image() -> None:
    flat = torch.full((2, 3, 9, 9), 0.37)
    torch.testing.assert_close(gaussian_blur(flat, kernel=5, sigma=1.0), flat, rtol=0, atol=1e-6)


def test_blur_is_a_2d_convolution_on_interior_pixels() -> None:
    img = _images(1, 12)
    out = gaussian_blur(img, kernel=5, sigma=1.0)
    assert out.shape == img.shape
    k2 = torch.outer(gaussian_kernel(5, 1.0), gaussian_kernel(5, 1.0))  # (5, 5), sums to 1
    y, x = 6, 4
    for c in range(3):
        direct = (img[0, c, y - 2 : y + 3, x - 2 : x + 3] * k2).sum()
        assert out[0, c, y, x].item() == pytest.approx(direct.item(), abs=1e-6)
    # at the border the padding reflects: still a weighted mean, inside the image's range
    assert img.min() <= out.min() and out.max() <= img.max()


def test_bsr_keeps_shape_and_range_and_follows_its_generator() -> None:
    img = _images(1, 32)[0]

    def run(seed: int) -> torch.Tensor:
        return bsr_degrade(img, torch.Generator().manual_seed(seed))

    a, b, c = run(5), run(5), run(6)
    assert a.shape == img.shape and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a - img).abs().mean() > 0.01  # it does corrupt


def test_degrade_probability_zero_is_the_identity_and_one_always_corrupts() -> None:
    img = _images()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(degrade(img, "bsr", generator=g, prob=0.0), img)
    blurred = degrade(img, "blur", generator=g, prob=1.0, blur_kernel=3, blur_sigma=0.6)
    torch.testing.assert_close(blurred, gaussian_blur(img, kernel=3, sigma=0.6).clamp(0, 1))
    with pytest.raises(ValueError, match="unknown degradation 'jpeg'"):
        degrade(img, "jpeg", generator=g, prob=1.0)


def test_training_pairs_are_aligned_crops_of_the_target() -> None:
    cfg = dataclasses.replace(preset("upsampler", "tiny"), corrupt_prob=0.0)  # 32 -> 16, crop 16
    images = _images(4, 32)
    target, low = stage.training_pair(cfg, images, torch.Generator().manual_seed(0))
    assert target.shape == (4, 3, 16, 16) and low.shape == (4, 3, 8, 8)
    torch.testing.assert_close(low, stage.downsample(target, 8))
    for i in range(4):  # each target is a crop of its image at an even offset
        hits = [
            (y, x)
            for y in range(0, 17, 2)
            for x in range(0, 17, 2)
            if torch.equal(images[i, :, y : y + 16, x : x + 16], target[i])
        ]
        assert len(hits) == 1


def test_crop_positions_do_not_follow_the_timestep(monkeypatch) -> None:
    """Regression: the pixel and diffusion generators were both seeded alike (with ``step``); on
    a CPU they then give the same numbers, and each crop's row offset was t mod the number of
    rows. Both now derive from the batch's seed, with different offsets."""
    # shapes-64: 64 px targets, 16 px crops at even offsets: 25 rows, and 25 divides T = 1000
    cfg = dataclasses.replace(preset("upsampler", "shapes-64"), corrupt_prob=0.0)
    side, crop, k = cfg.image_size, cfg.crop_size, cfg.scale
    positions = (side - crop) // k + 1
    assert cfg.diffusion.steps % positions == 0
    rows = torch.arange(side, dtype=torch.float32)[None, None, :, None] / side
    images = rows.expand(8, 3, side, side)  # pixel value encodes its row
    ts: list[int] = []
    offsets: list[int] = []

    def model(x_t, t, *, low_res):
        ts.extend(t.tolist())
        return torch.zeros_like(x_t)

    real = stage.training_pair

    def spy(cfg, images, generator):
        target, low = real(cfg, images, generator)
        offsets.extend((target[:, 0, 0, 0] * side).round().long().tolist())
        return target, low

    monkeypatch.setattr(stage, "training_pair", spy)
    model.parameters = lambda: iter([torch.zeros(1)])  # type: ignore[attr-defined]
    objective = stage.make_objective(cfg)
    for step in range(1, 11):
        objective(model, {"images": images, "seed": step}, step)
    assert len(offsets) == len(ts) == 80
    same = sum(t % positions == r // k for t, r in zip(ts, offsets, strict=True))
    assert same < 20, same  # independent draws agree 1/25 of the time; the bug gave 80/80

"""unCLIP's manipulations (§3): slerp against its definition (exact ends, unit norms, finite on
(anti)parallel pairs), and variations / interpolation / text diffs on a tiny random-weight
pipeline: seeded variations repeat and differ from each other, the interpolation's end frames
and the text diff's θ = 0 frame are the plain reconstructions of the inputs."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from tessera.config.presets import preset
from tessera.config.sampling import UnclipSampling
from tessera.errors import DataError
from tessera.models.clip import CLIP
from tessera.models.decoder import Decoder
from tessera.models.prior import DiffusionPrior
from tessera.models.upsampler import Upsampler
from tessera.pipelines.manipulations import (
    interpolate,
    invert_images,
    reconstruct,
    slerp,
    text_diff,
    variations,
)
from tessera.pipelines.unclip import UnclipPipeline

STEPS = 4


def _unit(*shape: int, seed: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)), dim=-1)


# -- slerp -------------------------------------------------------------------------------------


def test_slerp_ends_are_exact() -> None:
    a, b = _unit(5, 16, seed=0), _unit(5, 16, seed=1) * 3
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    x, y = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8)  # x_T's, one pair, many θ
    path = slerp(x, y, torch.linspace(0, 1, 5))
    assert path.shape == (5, 3, 8, 8)
    assert torch.equal(path[0], x[0]) and torch.equal(path[-1], y[0])


def test_slerp_keeps_unit_vectors_on_the_great_circle() -> None:
    a, b = _unit(6, 16, seed=2), _unit(6, 16, seed=3)
    omega = torch.arccos((a * b).sum(1).double())
    for theta in (0.1, 0.25, 0.5, 0.9):
        out = slerp(a, b, theta)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(6), rtol=0, atol=1e-6)
        # the angle to a is θΩ, to b (1 − θ)Ω: the constant-speed geodesic
        to_a = torch.arccos((out.double() * a).sum(1).clamp(-1, 1))
        torch.testing.assert_close(to_a, theta * omega, rtol=0, atol=1e-5)
    # the classic 2-d case by hand: a quarter turn, θ = 1/3 is 30°
    out = slerp(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 1 / 3)
    torch.testing.assert_close(out, torch.tensor([math.sqrt(3) / 2, 0.5]))


def test_slerp_parallel_and_antiparallel_are_finite() -> None:
    a = _unit(4, 16, seed=4)
    theta = torch.linspace(0, 1, 4)
    same = slerp(a, a.clone(), theta)
    torch.testing.assert_close(same, a)
    opposite = slerp(a, -a, theta)
    assert opposite.isfinite().all()
    torch.testing.assert_close(opposite.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(opposite[-1], -a[-1])
    half = slerp(a[0], -a[0], 0.5)  # a quarter turn away from both ends
    assert abs(float(half @ a[0])) < 1e-6 and abs(float(half.norm()) - 1) < 1e-6
    assert slerp(torch.zeros(3), torch.ones(3), 0.5).isfinite().all()
    assert slerp(a.half(), a.half(), 0.3).dtype == torch.float16


# -- the manipulations on a tiny pipeline ------------------------------------------------------


def _live(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Small random weights in the zero-initialised layers (a fresh decoder outputs 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return module.eval()


@pytest.fixture(scope="module")
def parts() -> dict:
    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import ShapesSource
    from tessera.text.tokenizer import TextTokenizer

    src = ShapesSource(ShapesConfig(size=32), split="train", n=200)
    tok = TextTokenizer.train([src.prompt(i) for i in range(200)], preset("tokenizer", "tiny"))
    torch.manual_seed(0)
    return {
        "tokenizer": tok,
        "clip": CLIP(preset("clip", "tiny")).eval(),
        "clip_tokenizer": tok,
        "priors": {"diffusion": DiffusionPrior(preset("prior", "tiny")).eval()},
        "decoder": _live(Decoder(preset("decoder", "tiny"))),
        "upsampler": _live(Upsampler(preset("upsampler", "tiny-64")), seed=1),  # 32 -> 64 px
    }


def _pipe(parts: dict, upsampled: bool) -> UnclipPipeline:
    kw = {k: v for k, v in parts.items() if k != "upsampler"}
    ups = [parts["upsampler"]] if upsampled else []
    settings = UnclipSampling(decoder_steps=STEPS, upsampler_steps=2, decoder_guidance=3.0)
    return UnclipPipeline(**kw, upsamplers=ups, settings=settings)


@pytest.fixture(scope="module")
def pipe(parts) -> UnclipPipeline:
    return _pipe(parts, upsampled=False)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def _recon(pipe, images) -> torch.Tensor:
    return reconstruct(pipe.decoder, pipe.clip, images, steps=STEPS).images


def test_invert_images_is_the_reconstruction_latent(pipe, images) -> None:
    z_i, x_T = invert_images(pipe, images)
    r = reconstruct(pipe.decoder, pipe.clip, images, steps=STEPS)
    assert z_i.shape == (2, 16) and x_T.shape == (2, 3, 32, 32)
    assert torch.equal(z_i, r.z_i) and torch.equal(x_T, r.x_T)
    big = F.interpolate(images, size=(48, 48), mode="bilinear")  # any input size
    assert invert_images(pipe, big)[1].shape == (2, 3, 32, 32)
    with pytest.raises(DataError, match="1 captions for 2 images"):
        invert_images(pipe, images, ["a red circle"])


def test_variations_are_seeded_and_differ(pipe, images) -> None:
    def run(seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return variations(pipe, images[0], n=3, eta=1.0, generator=gen)

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (3, 3, 32, 32) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all((a[i] - a[j]).abs().max() > 1e-3 for i, j in ((0, 1), (0, 2), (1, 2)))
    # η = 0 (guidance then 1): every "variation" is the reconstruction
    same = variations(pipe, images[:1], n=2, eta=0.0)
    recon = _recon(pipe, images[:1])
    torch.testing.assert_close(same, recon.expand(2, -1, -1, -1), rtol=0, atol=1e-5)


def test_interpolation_ends_are_the_reconstructions(pipe, images) -> None:
    frames = interpolate(pipe, images[0], images[1], frames=4)
    assert frames.shape == (4, 3, 32, 32)
    recon = _recon(pipe, images)
    torch.testing.assert_close(frames[0], recon[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(frames[-1], recon[1], rtol=0, atol=1e-5)
    assert (frames[1] - frames[0]).abs().max() > 1e-4  # the middle frames move


def test_text_diff_starts_at_the_reconstruction(pipe, images) -> None:
    frames = text_diff(pipe, images[0], "a red circle", "a blue square", frames=3, max_theta=0.5)
    assert frames.shape == (3, 3, 32, 32)
    torch.testing.assert_close(frames[0], _recon(pipe, images[:1])[0], rtol=0, atol=1e-5)
    assert (frames[-1] - frames[0]).abs().max() > 1e-4
    with pytest.raises(DataError, match="same CLIP text embedding"):
        text_diff(pipe, images[0], "a red circle", "a red circle")
    with pytest.raises(DataError, match="longer than"):
        text_diff(pipe, images[0], "a red circle", "a red circle " * 20)


def test_upsampled_outputs_share_the_upsampler_noise(parts, images) -> None:
    pipe = _pipe(parts, upsampled=True)
    assert pipe.image_size == 64
    frames = interpolate(pipe, images[0], images[1], frames=3, seed=7)
    assert frames.shape == (3, 3, 64, 64)
    low = interpolate(_pipe(parts, upsampled=False), images[0], images[1], frames=3)
    gen = torch.Generator().manual_seed(7)
    torch.testing.assert_close(frames[0], pipe.upsample(low[:1], generator=gen)[0])
    gen = torch.Generator().manual_seed(0)
    out = variations(pipe, images[0], n=2, generator=gen)
    assert out.shape == (2, 3, 64, 64)


# -- inpainting ---------------------------------------------------------------------------------


def _half_mask(size: int) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[:, size // 2 :] = 1
    return mask


@pytest.mark.parametrize("upsampled", [False, True])
def test_inpaint_keeps_every_unmasked_pixel_and_is_seeded(parts, images, upsampled) -> None:
    from tessera.pipelines.manipulations import inpaint

    pipe = _pipe(parts, upsampled=upsampled)
    size = pipe.image_size
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(3))
    out = inpaint(pipe, image, _half_mask(size), "a red circle", n=2, seed=4)
    assert out.images.shape == (2, 3, size, size) and out.scores is not None
    assert out.scores[0] >= out.scores[1]  # reranked by CLIP, best first
    assert torch.equal(out.images[..., : size // 2], image[..., : size // 2].expand(2, -1, -1, -1))
    assert not torch.allclose(out.images[..., size // 2 :], image[..., size // 2 :], atol=0.05)
    again = inpaint(pipe, image, _half_mask(size), "a red circle", n=2, seed=4)
    assert torch.equal(again.images, out.images)
    other = inpaint(pipe, image, _half_mask(size), "a red circle", n=2, seed=5)
    assert not torch.equal(other.images, out.images)


def test_inpaint_with_resampling_jumps_and_a_full_mask(pipe, images) -> None:
    from tessera.pipelines.manipulations import inpaint

    image = images[:1]
    out = inpaint(pipe, image, _half_mask(32), "a red circle", n=1, resample=2, jump=2)
    assert torch.equal(out.images[..., :16], image[..., :16])
    full = inpaint(pipe, image, torch.ones(32, 32), "a red circle", n=1)  # text to image
    assert full.images.shape == (1, 3, 32, 32)


@pytest.mark.parametrize(("mask", "message"), [
    (torch.zeros(32, 32), "the mask is empty"),
    (torch.full((32, 32), 0.4), "the mask is empty"),  # grey below 0.5 keeps
    (torch.ones(16, 16), "the mask must be one plane of the image's size (32, 32)"),
    (torch.ones(2, 32, 32), "the mask must be one plane"),
])  # fmt: skip
def test_bad_masks_are_one_line_errors(pipe, images, mask, message) -> None:
    from tessera.errors import DataError
    from tessera.pipelines.manipulations import inpaint

    with pytest.raises(DataError, match=re.escape(message)):
        inpaint(pipe, images[:1], mask, "a red circle", n=1)

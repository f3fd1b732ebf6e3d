"""The unCLIP decoder: the guidance drops (learned null embedding, empty caption), the
caption path's per-position padding, the normalised CLIP embedding, classifier-free guidance
against two separate calls, and DDIM decoding / inversion on the tiny preset."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from tessera.config.presets import preset
from tessera.models.decoder import PAD_ID, Decoder
from tessera.sampling.unclip import decode, decoder_fn, invert

B = 2


def _live(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Small random weights in the zero-initialised layers and the null embedding, so every
    conditioning path reaches the output (a fresh decoder outputs exactly 0)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if not p.any():
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
    return module


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    torch.manual_seed(0)
    return _live(Decoder(preset("decoder", "tiny"))).eval()


@pytest.fixture(scope="module")
def inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "x": torch.randn(B, 3, 32, 32, generator=g),
        "t": torch.tensor([10, 600]),
        "clip": torch.randn(B, 16, generator=g),
        "clip2": torch.randn(B, 16, generator=g),
        "text": torch.tensor([[5, 17, 42, 2, 0, 0], [7, 8, 2, 0, 0, 0]]),
        "text2": torch.tensor([[9, 9, 9, 9, 2, 0], [33, 2, 0, 0, 0, 0]]),
    }


def _out(decoder, inputs, clip="clip", text="text", **kw) -> torch.Tensor:
    with torch.no_grad():
        return decoder(
            inputs["x"],
            inputs["t"],
            clip_emb=inputs[clip],
            text=None if text is None else inputs[text],
            **kw,
        )


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-4


YES, NO = torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)


def test_output_is_the_unet_output_with_learned_variance(decoder, inputs) -> None:
    out = _out(decoder, inputs)
    assert out.shape == (B, 6, 32, 32) and out.isfinite().all()  # ε and the variance values


def test_drop_clip_replaces_the_embedding_by_the_learned_null(decoder, inputs) -> None:
    assert _differ(_out(decoder, inputs), _out(decoder, inputs, clip="clip2"))
    dropped = _out(decoder, inputs, drop_clip=YES)
    torch.testing.assert_close(dropped, _out(decoder, inputs, clip="clip2", drop_clip=YES))
    # the null is a parameter: changing it changes the unconditional output
    saved = decoder.null_clip.detach().clone()
    with torch.no_grad():
        decoder.null_clip.add_(1.0)
        moved = _out(decoder, inputs, drop_clip=YES)
        decoder.null_clip.copy_(saved)
    assert _differ(dropped, moved)
    # per example: only the dropped row loses its embedding
    mixed = _out(decoder, inputs, drop_clip=torch.tensor([True, False]))
    torch.testing.assert_close(mixed[0], dropped[0])
    torch.testing.assert_close(mixed[1], _out(decoder, inputs)[1])


def test_drop_text_makes_the_output_independent_of_the_caption(decoder, inputs) -> None:
    assert _differ(_out(decoder, inputs), _out(decoder, inputs, text="text2"))
    dropped = _out(decoder, inputs, drop_text=YES)
    torch.testing.assert_close(dropped, _out(decoder, inputs, text="text2", drop_text=YES))
    # a dropped caption is the empty caption: the same as passing none
    torch.testing.assert_close(dropped, _out(decoder, inputs, text=None))
    assert _differ(dropped, _out(decoder, inputs, drop_text=NO))


def test_padding_uses_a_learned_embedding_per_position(decoder) -> None:
    enc = decoder.text
    ids = torch.tensor([[5, 17, 42, 2]])  # 4 tokens, padded to 16 with PAD_ID
    # random (not constant: a constant shift is invisible through the LayerNorms) nudges
    bump = torch.randn(32, generator=torch.Generator().manual_seed(3))
    saved = {k: v.clone() for k, v in enc.state_dict().items()}
    with torch.no_grad():
        seq, last = enc(ids)
        full = torch.cat([ids, torch.full((1, 12), PAD_ID)], dim=1)
        torch.testing.assert_close(enc(full)[0], seq)  # short ids are padded with PAD_ID
        assert seq.shape == (1, 16, 32) and torch.equal(last, seq[:, -1])
        # the pad id's token embedding is never used...
        enc.token_embedding.weight[PAD_ID].add_(bump)
        torch.testing.assert_close(enc(ids)[0], seq)
        enc.load_state_dict(saved)
        # ...each padded position has its own learned embedding
        enc.padding_embedding[9].add_(bump)
        moved = enc(ids)[0]
        enc.load_state_dict(saved)
        # and a real token's position does not use it
        enc.padding_embedding[2].add_(bump)
        torch.testing.assert_close(enc(ids)[0], seq)
        enc.load_state_dict(saved)
    assert _differ(moved, seq)
    with pytest.raises(ValueError, match="captions of 17 tokens exceed the decoder's 16"):
        enc(torch.ones(1, 17, dtype=torch.long))


def test_the_clip_embedding_is_normalised(decoder, inputs) -> None:
    scaled = dict(inputs, clip=3.0 * inputs["clip"])
    torch.testing.assert_close(_out(decoder, scaled), _out(decoder, inputs), rtol=0, atol=1e-5)


@pytest.mark.parametrize("scale", [0.0, 3.0])
def test_guidance_mixes_two_separate_calls(decoder, inputs, scale) -> None:
    x, t = inputs["x"], inputs["t"]
    with torch.no_grad():
        guided = decoder_fn(decoder, inputs["clip"], inputs["text"], guidance=scale)(x, t)
        cond = _out(decoder, inputs)
        uncond = _out(decoder, inputs, drop_clip=YES, drop_text=YES)
    want = torch.cat([uncond[:, :3] + scale * (cond[:, :3] - uncond[:, :3]), cond[:, 3:]], 1)
    # one batched call against two: equal up to float32 summation order
    torch.testing.assert_close(guided, want, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        plain = decoder_fn(decoder, inputs["clip"], inputs["text"], guidance=1.0)(x, t)
    torch.testing.assert_close(plain, cond)


def test_decode_is_deterministic_given_a_generator(decoder, inputs) -> None:
    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return decode(decoder, inputs["clip"], inputs["text"], steps=3, generator=g)

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (B, 3, 32, 32) and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and _differ(a, c)
    assert not decoder.training  # left as it was


def test_invert_then_decode_is_exact_for_a_zero_prediction(inputs) -> None:
    """A fresh decoder predicts ε = 0, so DDIM is the pure scaling x_t = √ᾱ_t x0 both ways:
    inverting and decoding on the same respaced steps must give back the image (a check that
    ``invert`` and ``decode`` walk the same timesteps)."""
    cfg = preset("decoder", "tiny")
    cfg = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, prediction="eps"))
    torch.manual_seed(0)
    fresh = Decoder(cfg).eval()
    images = torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x_T = invert(fresh, images, inputs["clip"], inputs["text"], steps=5)
    back = decode(fresh, inputs["clip"], inputs["text"], steps=5, eta=0.0, x_T=x_T)
    torch.testing.assert_close(back, images, rtol=0, atol=1e-4)


def test_invert_then_decode_round_trip_is_finite(decoder, inputs) -> None:
    """On an untrained (random) decoder the DDIM ODE is far from the data, so only finiteness
    and shapes are testable here; the reconstruction bound of a trained decoder (the variations
    of unCLIP §3) needs a trained checkpoint and is measured, not tested."""
    images = torch.rand(B, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    x_T = invert(decoder, images, inputs["clip"], inputs["text"], steps=5, guidance=1.0)
    assert x_T.shape == images.shape and x_T.isfinite().all()
    back = decode(decoder, inputs["clip"], inputs["text"], steps=5, eta=0.0, x_T=x_T, guidance=1.0)
    assert back.shape == images.shape and back.isfinite().all()
    again = decode(decoder, inputs["clip"], inputs["text"], steps=5, eta=0.0, x_T=x_T, guidance=1.0)
    assert torch.equal(back, again)  # eta 0: deterministic given x_T


def test_ddpm_sampler_is_ancestral_and_seeded(decoder, inputs) -> None:
    """sampler="ddpm" draws fresh noise every step (not DDIM's deterministic path), from the
    generator only; an unknown sampler is a one-line error."""

    def run(sampler: str, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return decode(
            decoder, inputs["clip"], inputs["text"], steps=4, generator=g, sampler=sampler
        )

    a, b = run("ddpm", 0), run("ddpm", 0)
    assert torch.equal(a, b) and a.shape == run("ddim", 0).shape
    assert _differ(a, run("ddim", 0)) and _differ(a, run("ddpm", 1))
    with pytest.raises(ValueError, match="sampler must be"):
        run("euler", 0)

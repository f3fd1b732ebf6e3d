"""unCLIP's image manipulations (Ramesh et al. 2022 §3): an image is represented by its
bipartite latent (z_i, x_T) -- the CLIP image embedding and the DDIM inversion of the image
under the decoder conditioned on z_i. "Decoding with η = 0 reproduces the image."
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from tessera.sampling.unclip import decode, embed_images, invert


@dataclasses.dataclass
class Reconstruction:
    """images: the decoder's reconstructions (B, 3, S, S) in [0, 1]; x_T: the inverted noise
    (B, 3, S, S); z_i: the CLIP image embeddings (B, D); psnr: per image, in dB, against the
    inputs at the decoder's size."""

    images: torch.Tensor
    x_T: torch.Tensor
    z_i: torch.Tensor
    psnr: list[float]


def psnr(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    """Per-image PSNR (dB) of images in [0, 1] (B, 3, H, W); identical images give inf."""
    mse = (a.float().cpu() - b.float().cpu()).square().flatten(1).mean(1)
    return [float("inf") if m == 0 else float(-10 * torch.log10(m)) for m in mse]


def encode_captions(tokenizer: Any, captions: Sequence[str] | None) -> torch.Tensor | None:
    """Caption ids as the decoder was trained on them (``<eos>``-ended, no dropout); None
    when there are none (the decoder then sees the dropped-caption input)."""
    if captions is None:
        return None
    return tokenizer.encode_batch(list(captions), add_eos=True).ids


def reconstruct(
    decoder: nn.Module,
    clip: nn.Module,
    images: torch.Tensor,
    *,
    tokenizer: Any = None,
    captions: Sequence[str] | None = None,
    steps: int = 50,
    autocast: bool = False,
    progress: bool = False,
) -> Reconstruction:
    """CLIP-encode ``images`` (B, 3, H, W) in [0, 1], DDIM-invert them under the decoder
    (conditioned on z_i and, when given, the captions), then decode with η = 0."""
    size = decoder.config.image_size  # type: ignore[attr-defined]
    if images.shape[-1] != size:
        images = torch.nn.functional.interpolate(
            images.float(), size=(size, size), mode="bilinear", antialias=True
        ).clamp(0, 1)
    z_i = embed_images(clip, images)
    text = encode_captions(tokenizer, captions)
    x_T = invert(decoder, images, z_i, text, steps=steps, autocast=autocast, progress=progress)
    out = decode(
        decoder,
        z_i,
        text,
        steps=steps,
        guidance=1.0,
        eta=0.0,
        x_T=x_T,
        autocast=autocast,
        progress=progress,
    )
    return Reconstruction(images=out, x_T=x_T, z_i=z_i, psnr=psnr(out, images))

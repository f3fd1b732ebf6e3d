"""Corruptions of the upsamplers' conditioning image in training (unCLIP §2.1, App. C):
"we slightly corrupt the conditioning image ... Gaussian blur for the first upsampling
stage ... a more diverse BSR degradation for the second" (Rombach et al. 2022's BSR: blur,
resize, noise and JPEG in a random order of strengths).

Images are (B, 3, H, W) float in [0, 1]; every random choice comes from the ``generator``
(a CPU one: the JPEG step runs through Pillow on the CPU).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (size,) float32 (size odd)."""
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).float()


def gaussian_blur(images: torch.Tensor, *, kernel: int = 3, sigma: float = 0.6) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding; shape kept."""
    k = gaussian_kernel(kernel, sigma).to(images.device, images.dtype)
    c = images.shape[1]
    pad = kernel // 2
    x = F.pad(images, (pad, pad, pad, pad), mode="reflect") if pad else images
    x = F.conv2d(x, k.view(1, 1, 1, -1).expand(c, 1, 1, kernel), groups=c)
    return F.conv2d(x, k.view(1, 1, -1, 1).expand(c, 1, kernel, 1), groups=c)


def _uniform(generator: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=generator))


def jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    """One (3, H, W) image through JPEG at ``quality`` (Pillow) and back."""
    arr = (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buf = io.BytesIO()
    PILImage.fromarray(arr).save(buf, format="JPEG", quality=int(quality))
    out = np.asarray(PILImage.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return torch.from_numpy(out.copy()).permute(2, 0, 1).float().div(255).to(image.device)


def bsr_degrade(image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A BSR-style degradation of one (3, h, w) image, size kept: a random-strength blur, a
    random down-and-up resize (factor 1-2, bilinear or bicubic), Gaussian noise (sigma up to
    0.04) and JPEG (quality 40-95), the middle two in a random order."""
    h, w = image.shape[-2:]
    x = image[None]
    sigma = _uniform(generator, 0.2, 1.2)
    x = gaussian_blur(x, kernel=2 * math.ceil(2 * sigma) + 1, sigma=sigma)

    def resize(y: torch.Tensor) -> torch.Tensor:
        f = _uniform(generator, 1.0, 2.0)
        mode = "bicubic" if float(torch.rand((), generator=generator)) < 0.5 else "bilinear"
        small = (max(1, round(h / f)), max(1, round(w / f)))
        y = F.interpolate(y, size=small, mode="bilinear", antialias=True, align_corners=False)
        return F.interpolate(y, size=(h, w), mode=mode, align_corners=False)

    def noise(y: torch.Tensor) -> torch.Tensor:
        std = _uniform(generator, 0.0, 0.04)
        return y + std * torch.randn(y.shape, generator=generator).to(y.device)

    steps = [resize, noise]
    if float(torch.rand((), generator=generator)) < 0.5:
        steps.reverse()
    for step in steps:
        x = step(x)
    q = int(_uniform(generator, 40, 95))
    return jpeg(x[0].clamp(0, 1), q)


def degrade(
    images: torch.Tensor,
    kind: str,
    *,
    generator: torch.Generator,
    prob: float = 1.0,
    blur_kernel: int = 3,
    blur_sigma: float = 0.6,
) -> torch.Tensor:
    """Corrupt each image with probability ``prob``: ``blur`` (fixed Gaussian blur) or
    ``bsr`` (:func:`bsr_degrade`)."""
    out = images.clone()
    for i in range(images.shape[0]):
        if float(torch.rand((), generator=generator)) >= prob:
            continue
        if kind == "blur":
            out[i] = gaussian_blur(images[i : i + 1], kernel=blur_kernel, sigma=blur_sigma)[0]
        elif kind == "bsr":
            out[i] = bsr_degrade(images[i], generator)
        else:
            raise ValueError(f"unknown degradation {kind!r} (blur | bsr)")
    return out.clamp(0, 1)

"""Feature extractors for FID/IS and the batched, streaming pass over an image set.

Two feature spaces:

- ``inception`` (default): the FID Inception-v3 (TF 2015-12-05 graph, TF1 bilinear resize to
  299, ``(x - 128) / 128``) from a weights file the user supplies (:mod:`.inception`); gives
  the 2048-d pool features (FID) and the 1008-way logits (Inception Score).
- ``clip:DIR``: the L2-normalised image embeddings of a tessera CLIP checkpoint, for FID when
  no Inception weights are at hand (scores are not comparable with Inception FIDs).

Images enter as uint8, so generated and real images are quantised the same way; an optional
Gaussian blur (PIL, ``radius`` = standard deviation in pixels) is applied to every image first,
as in the paper's FID-vs-blur sweep (Fig. 9).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from tessera.errors import ConfigError, DataError
from tessera.evaluation.fid import FeatureStats

__all__ = [
    "ClipExtractor",
    "Extractor",
    "InceptionExtractor",
    "blur",
    "extract",
    "open_extractor",
]

logger = logging.getLogger("tessera.evaluation")


class Extractor(Protocol):
    """Maps a uint8 batch (N, 3, H, W) to named float32 feature arrays."""

    name: str
    outputs: tuple[str, ...]

    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]: ...

    def provenance(self) -> dict[str, Any]: ...


class InceptionExtractor:
    """The FID Inception-v3: ``pool`` (2048) for FID, ``logits_unbiased`` (1008) for IS."""

    name = "inception"
    outputs = ("pool", "logits_unbiased")

    def __init__(self, weights: str | Path | None = None, *, device: str = "cpu") -> None:
        from tessera.evaluation.inception import load_inception

        # channels-last convolutions: ~2x faster on CPU (benchmarks/bench_inception.py); the
        # features differ from the contiguous layout by ~3e-7 relative.
        self.model = load_inception(weights, device=device).to(memory_format=torch.channels_last)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        out = self.model(images.to(self.device))
        return {k: getattr(out, k).float().cpu().numpy() for k in self.outputs}

    def provenance(self) -> dict[str, Any]:
        return {
            "features": "inception-2015-12-05 pool3 (2048)",
            "resize": "tf1-bilinear to 299 (align_corners=False)",
            "normalisation": "(x - 128) / 128",
            "weights_sha256": self.model.weights_sha256,
            "dtype": "float32",
        }


class ClipExtractor:
    """A tessera CLIP's normalised image embeddings (bicubic antialiased resize to its size)."""

    name = "clip"
    outputs = ("pool",)

    def __init__(self, path: str | Path, *, device: str = "cpu") -> None:
        from tessera.checkpoint import load_checkpoint

        ck = load_checkpoint(path, kind="clip")
        self.model = ck.obj.eval().to(device)
        self.path = Path(path)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        import torch.nn.functional as F

        s = self.model.config.image_size
        x = images.to(self.device, torch.float32) / 255.0
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bicubic", antialias=True).clamp(0, 1)
        return {"pool": self.model.encode_image(x).float().cpu().numpy()}

    def provenance(self) -> dict[str, Any]:
        from tessera.evaluation.inception import weights_sha256

        digest = weights_sha256(self.path / "model.safetensors")
        return {
            "features": f"tessera CLIP image embedding ({self.model.config.embed_dim})",
            "clip": str(self.path),
            "weights_sha256": digest,
            "resize": f"bicubic antialiased to {self.model.config.image_size}",
            "dtype": "float32",
        }


def open_extractor(spec: str | None, *, inception: str | Path | None = None) -> Extractor:
    """``inception`` (default; weights from ``inception`` or $TESSERA_INCEPTION_WEIGHTS) or
    ``clip:DIR``."""
    if spec in (None, "", "inception"):
        return InceptionExtractor(inception)
    if spec.startswith("clip:"):
        return ClipExtractor(spec[len("clip:") :])
    raise ConfigError(f"unknown feature space {spec!r}: use 'inception' or 'clip:DIR'")


def blur(image: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a uint8 (H, W, 3) image (PIL; radius = sigma in pixels); 0 = as is."""
    if radius <= 0:
        return image
    from PIL import Image, ImageFilter

    return np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(radius)))


@dataclass
class Extracted:
    """What :func:`extract` returns: streaming stats of ``pool`` and the kept outputs."""

    stats: FeatureStats | None = None
    kept: dict[str, list[np.ndarray]] = field(default_factory=dict)
    n: int = 0

    def array(self, name: str) -> np.ndarray:
        if name not in self.kept or not self.kept[name]:
            raise DataError(f"no {name} features were extracted")
        return np.concatenate(self.kept[name])


def _batches(images: Iterable[np.ndarray], batch_size: int) -> Iterator[np.ndarray]:
    """Stack consecutive same-size images into batches of at most ``batch_size``."""
    batch: list[np.ndarray] = []
    for img in images:
        if batch and (len(batch) == batch_size or img.shape != batch[0].shape):
            yield np.stack(batch)
            batch = []
        batch.append(img)
    if batch:
        yield np.stack(batch)


def extract(
    images: Iterable[np.ndarray],
    extractor: Extractor,
    *,
    batch_size: int = 32,
    blur_radius: float = 0.0,
    keep: tuple[str, ...] = (),
    total: int | None = None,
    progress: bool = True,
    desc: str = "features",
) -> Extracted:
    """One pass over uint8 (H, W, 3) images: float64 streaming statistics of ``pool`` and, for
    each name in ``keep`` (e.g. ``logits_unbiased``), the per-image outputs in order."""
    if batch_size < 1:
        raise ConfigError(f"batch size must be >= 1, got {batch_size}")
    from tqdm import tqdm

    out = Extracted()
    bar = tqdm(total=total, desc=desc, unit="img", disable=not progress, leave=False)
    try:
        blurred = (blur(img, blur_radius) for img in images)
        for batch in _batches(blurred, batch_size):
            x = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
            feats = extractor(x)
            pool = feats["pool"]
            if out.stats is None:
                out.stats = FeatureStats(pool.shape[1])
            out.stats.update(pool)
            for name in keep:
                out.kept.setdefault(name, []).append(feats[name])
            out.n += batch.shape[0]
            bar.update(batch.shape[0])
    finally:
        bar.close()
    if out.n == 0:
        raise DataError("no readable images to extract features from")
    return out

"""The paper's zero-shot FID protocols on MS-COCO and CUB (DALL·E, Sec. 3.1 and Fig. 9).

For the first ``n`` images of the split (COCO validation: 30,000 in the paper; CUB: the
class-disjoint test split), one caption per image is drawn (seeded), the model generates an
image for it (optionally the best of ``candidates`` by a CLIP reranker), and FID compares the
generated set with the real images of the same captions, both at ``image_size`` (256): real
images are resized (shorter side, bicubic antialiased) and centre-cropped, generated ones are
resized bicubic when the model works at another size. A Gaussian blur of each radius in
``blur_radii`` is applied to both sets before the features (the paper's 0..8 sweep).

Generation and scoring are separate steps through files: samples are written as PNGs with a
manifest (``samples/manifest.jsonl``), so :func:`run_protocol` with ``samples=`` re-scores an
existing set from any generator.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tessera.errors import DataError
from tessera.evaluation.features import Extractor, extract
from tessera.evaluation.fid import frechet_distance
from tessera.pipelines.base import TextToImage

__all__ = ["ProtocolResult", "real_pairs", "run_protocol"]

logger = logging.getLogger("tessera.evaluation")

PROTOCOLS = {"coco": "coco", "cub": "cub"}


@dataclass
class ProtocolResult:
    metrics: dict[str, Any]
    real_grid: list[np.ndarray]
    generated_grid: list[np.ndarray]
    captions: list[str]


def real_pairs(
    protocol: str, data: str | Path, *, n: int, image_size: int, seed: int = 0
) -> Iterator[tuple[str, np.ndarray]]:
    """(caption, uint8 image at ``image_size``) for the first ``n`` readable images of the
    protocol's split; unreadable images are skipped and counted by the source's report."""
    from tessera.data.sources import open_source
    from tessera.data.transforms import center_crop, resize_shorter

    if protocol not in PROTOCOLS:
        raise DataError(f"unknown protocol {protocol!r}: use coco or cub")
    source = open_source(f"{PROTOCOLS[protocol]}:{data}", n=n)
    rng = random.Random(seed)
    for ex in source:
        caption = ex.captions[rng.randrange(len(ex.captions))]
        img = center_crop(resize_shorter(ex.image, image_size), image_size)
        yield caption, np.asarray(img.convert("RGB"), dtype=np.uint8)
    source.report.log_summary()


def _generate(
    pipe: TextToImage,
    captions: Sequence[str],
    out_dir: Path,
    *,
    image_size: int,
    candidates: int,
    settings: Any,
    seed: int,
    batch: int,
) -> Path:
    """Generate one image per caption (best of ``candidates`` when the pipeline reranks),
    resized to ``image_size``; writes PNGs and ``manifest.jsonl``; returns the manifest."""
    from PIL import Image
    from tqdm import tqdm

    from tessera.data.images import to_uint8

    out_dir.mkdir(parents=True, exist_ok=True)
    reranks = "rerank" in pipe.capabilities
    keep = 1 if reranks else None
    n_draw = candidates if reranks else 1
    options = {} if settings is None else {"settings": settings}
    lines = []
    for s in tqdm(range(0, len(captions), batch), desc="generate", unit="batch", leave=False):
        chunk = list(captions[s : s + batch])
        out = pipe.generate(chunk, n=n_draw, keep=keep, seed=seed + s, **options)
        for j, img in enumerate(to_uint8(out.images)):
            pil = Image.fromarray(img)
            if pil.size != (image_size, image_size):
                pil = pil.resize((image_size, image_size), Image.Resampling.BICUBIC)
            name = f"{s + j:06d}.png"
            pil.save(out_dir / name)
            rec = {"prompt": out.prompts[j], "file": name, "seed": seed + s}
            if out.scores is not None:
                rec["score"] = out.scores[j]
            lines.append(json.dumps(rec))
    manifest = out_dir / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def run_protocol(
    protocol: str,
    data: str | Path,
    out_dir: str | Path,
    *,
    extractor: Extractor,
    pipeline: TextToImage | None = None,
    samples: str | Path | None = None,
    n: int = 30_000,
    image_size: int = 256,
    blur_radii: Sequence[float] = (0.0,),
    candidates: int = 1,
    settings: Any = None,
    seed: int = 0,
    batch: int = 32,
    progress: bool = True,
) -> ProtocolResult:
    """Zero-shot FID of ``pipeline`` (or of the manifest ``samples``) on ``protocol``'s data.

    Returns the metrics (``fid`` per blur radius, ``n``, provenance) and a few images for the
    report. Real features are computed in one streaming pass per radius set; nothing holds
    the whole image set in memory.
    """
    from tessera.evaluation.manifest import ImageSet

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    radii = sorted({float(r) for r in blur_radii})
    if any(r < 0 or r > 64 for r in radii):
        raise DataError(f"blur radii must be in [0, 64], got {radii}")

    captions: list[str] = []
    real_grid: list[np.ndarray] = []
    real_stats = {}
    for r in radii:
        pairs = real_pairs(protocol, data, n=n, image_size=image_size, seed=seed)

        def images(pairs: Iterator[tuple[str, np.ndarray]] = pairs, first: bool = r == radii[0]):
            for caption, img in pairs:
                if first:
                    captions.append(caption)
                    if len(real_grid) < 16:
                        real_grid.append(img)
                yield img

        ext = extract(
            images(),
            extractor,
            batch_size=batch,
            blur_radius=r,
            total=n,
            progress=progress,
            desc=f"real r={r:g}",
        )
        real_stats[r] = ext.stats.stats()  # type: ignore[union-attr]
    if len(captions) < 2:
        raise DataError(f"{protocol} data at {data} gave {len(captions)} readable image(s)")

    if samples is None:
        if pipeline is None:
            raise DataError("give a model (--model) or generated samples (--samples)")
        manifest = _generate(
            pipeline,
            captions,
            out / "samples",
            image_size=image_size,
            candidates=candidates,
            settings=settings,
            seed=seed,
            batch=batch,
        )
    else:
        manifest = Path(samples)
    gen_set = ImageSet(manifest)
    if len(gen_set) != len(captions):
        logger.warning("%d generated images for %d captions", len(gen_set), len(captions))

    generated_grid: list[np.ndarray] = []
    fids: dict[str, float] = {}
    n_gen = 0
    for r in radii:

        def gen_images(first: bool = r == radii[0]) -> Iterator[np.ndarray]:
            from PIL import Image

            for _, img in gen_set:
                if img.shape[:2] != (image_size, image_size):
                    img = np.asarray(
                        Image.fromarray(img).resize(
                            (image_size, image_size), Image.Resampling.BICUBIC
                        )
                    )
                if first and len(generated_grid) < 16:
                    generated_grid.append(img)
                yield img

        ext = extract(
            gen_images(),
            extractor,
            batch_size=batch,
            blur_radius=r,
            total=len(gen_set),
            progress=progress,
            desc=f"generated r={r:g}",
        )
        g = ext.stats.stats()  # type: ignore[union-attr]
        n_gen = g.n
        rs = real_stats[r]
        fids[f"{r:g}"] = frechet_distance(rs.mu, rs.sigma, g.mu, g.sigma)

    metrics: dict[str, Any] = {
        "protocol": protocol,
        "fid": fids[f"{radii[0]:g}"],
        "fid_by_blur_radius": fids,
        "n_real": real_stats[radii[0]].n,
        "n_generated": n_gen,
        "image_size": image_size,
        "candidates": candidates,
        "seed": seed,
        "samples": str(manifest),
        "real_stats_sha256": real_stats[radii[0]].sha256(),
        "extractor": extractor.provenance(),
        "skipped_generated": gen_set.report.to_dict()["skipped"],
    }
    if min(metrics["n_real"], n_gen) < 2048:
        metrics["warning"] = (
            "fewer than 2048 images: the covariance is singular and FID is biased upward; "
            "compare only at equal n"
        )
    return ProtocolResult(metrics, real_grid, generated_grid, captions[:16])

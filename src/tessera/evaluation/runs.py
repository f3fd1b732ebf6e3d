"""One function per ``tessera eval`` metric: plain arguments in, metrics and sample images out.

Each ``run_*`` function reads image files (a folder, a manifest or a statistics file), computes
its metric and returns an :class:`EvalResult`: a title, the metrics dict that becomes
``metrics.json``, a one-line summary of the headline number, and a few of the scored images
(:class:`Shown`, any size mix) for a report. Writing the report is the caller's business
(``tessera.reporting.metrics``); ``run_fidelity`` and ``run_zero_shot_fid`` also write their
per-sample files (``judged.jsonl``, generated ``samples/``) to ``out_dir``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from tessera.errors import ConfigError, DataError

__all__ = [
    "EvalResult",
    "Shown",
    "benchmark_prompts",
    "parse_blur_radii",
    "run_clip_score",
    "run_fid",
    "run_fidelity",
    "run_inception_score",
    "run_zero_shot_fid",
]

SHOWN = 16  # images kept per group for a report


class Shown(NamedTuple):
    """A group of images to show: a title, uint8 (H, W, 3) arrays (sizes may differ) and
    optionally one caption per image."""

    title: str
    images: list[np.ndarray]
    captions: list[str] | None = None


@dataclass
class EvalResult:
    title: str
    metrics: dict[str, Any]
    summary: str
    shown: list[Shown] = field(default_factory=list)


def parse_blur_radii(text: str) -> list[float]:
    """Blur radii from the text of a ``--blur`` option: comma-separated, or ``sweep`` (0..8)."""
    if text == "sweep":
        return [float(r) for r in range(9)]
    try:
        radii = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--blur takes comma-separated radii or 'sweep', got {text!r}") from None
    if not radii or any(not 0 <= r <= 64 for r in radii):
        raise ConfigError(f"--blur radii must be in [0, 64], got {text!r}")
    return radii


def _set_stats(
    spec: str | Path,
    extractor: Any,
    *,
    batch_size: int,
    progress: bool,
    blur_radius: float,
    keep: tuple[str, ...] = (),
) -> tuple[Any, Any, list[np.ndarray]]:
    """(Stats, Extracted | None, first images) of an image set or a stats file."""
    from tessera.evaluation.features import extract
    from tessera.evaluation.fid import load_stats
    from tessera.evaluation.manifest import ImageSet

    if str(spec).endswith(".npz"):
        return load_stats(spec), None, []
    images = ImageSet(spec)
    shown: list[np.ndarray] = []

    def pixels() -> Iterator[np.ndarray]:
        for _, img in images:
            if len(shown) < SHOWN:
                shown.append(img)
            yield img

    ext = extract(
        pixels(),
        extractor,
        batch_size=batch_size,
        blur_radius=blur_radius,
        keep=keep,
        total=len(images),
        progress=progress,
        desc=str(spec),
    )
    return ext.stats.stats(), ext, shown


def run_fid(
    real: str | Path,
    generated: str | Path,
    *,
    features: str = "inception",
    inception: str | Path | None = None,
    blur_radii: Sequence[float] = (0.0,),
    save_stats: str | Path | None = None,
    batch_size: int = 32,
    progress: bool = True,
) -> EvalResult:
    """FID between two image sets (or statistics ``.npz`` files) in the ``features`` space
    (``inception`` or ``clip:DIR``), once per blur radius (applied to both sets; image sets
    only). ``fid`` is the first radius's; ``save_stats`` writes the reference statistics."""
    from tessera.evaluation.features import open_extractor
    from tessera.evaluation.fid import frechet_distance

    radii = list(blur_radii)
    if any(r > 0 for r in radii) and (
        str(real).endswith(".npz") or str(generated).endswith(".npz")
    ):
        raise DataError("--blur needs image sets, not statistics files")
    extractor = open_extractor(features, inception=inception)
    opts = {"batch_size": batch_size, "progress": progress}
    fids: dict[str, float] = {}
    shown: list[Shown] = []
    for r in radii:
        real_stats, _, real_shown = _set_stats(real, extractor, blur_radius=r, **opts)
        gen, _, gen_shown = _set_stats(generated, extractor, blur_radius=r, **opts)
        if real_stats.mu.shape != gen.mu.shape:
            raise DataError(f"feature sizes differ: {real_stats.mu.size} vs {gen.mu.size}")
        fids[f"{r:g}"] = frechet_distance(real_stats.mu, real_stats.sigma, gen.mu, gen.sigma)
        if r == radii[0]:
            if save_stats:
                real_stats.save(save_stats)
            shown = [Shown("Reference", real_shown), Shown("Generated", gen_shown)]
            n_real, n_gen, real_hash = real_stats.n, gen.n, real_stats.sha256()
    metrics = {
        "fid": fids[f"{radii[0]:g}"],
        "fid_by_blur_radius": fids,
        "n_real": n_real,
        "n_generated": n_gen,
        "real_stats_sha256": real_hash,
        "features": features,
        "extractor": extractor.provenance(),
    }
    summary = f"FID {metrics['fid']:.4f} (n_real={n_real}, n_generated={n_gen})"
    return EvalResult("FID", metrics, summary, shown)


def run_inception_score(
    generated: str | Path,
    *,
    inception: str | Path | None = None,
    splits: int = 10,
    batch_size: int = 32,
    progress: bool = True,
) -> EvalResult:
    """Inception Score (mean and std over ``splits``) of an image set."""
    from tessera.evaluation.features import InceptionExtractor
    from tessera.evaluation.fid import inception_score

    if splits < 1:
        raise ConfigError(f"--splits must be >= 1, got {splits}")
    extractor = InceptionExtractor(inception)
    _, ext, shown = _set_stats(
        generated,
        extractor,
        batch_size=batch_size,
        progress=progress,
        blur_radius=0.0,
        keep=("logits_unbiased",),
    )
    logits = ext.array("logits_unbiased").astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    mean, std = inception_score(probs, splits=splits)
    metrics = {
        "inception_score": mean,
        "inception_score_std": std,
        "n": int(probs.shape[0]),
        "splits": splits,
        "extractor": extractor.provenance(),
    }
    summary = f"IS {mean:.4f} ± {std:.4f} (n={probs.shape[0]}, {splits} splits)"
    return EvalResult("Inception Score", metrics, summary, [Shown("Images", shown)])


def run_fidelity(manifest: str | Path, out_dir: str | Path) -> EvalResult:
    """Caption fidelity of a manifest of shapes images (the checker); writes one verdict per
    judged image to ``out_dir/judged.jsonl`` and shows up to 16 passed and 16 failed images."""
    from PIL import Image

    from tessera.evaluation.fidelity import score_manifest

    metrics, records = score_manifest(manifest)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "judged.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    shown = []
    for title, passed in (("Passed", True), ("Failed", False)):
        rs = [r for r in records if bool(r["passed"]) == passed][:SHOWN]
        imgs = [np.asarray(Image.open(r["file"]).convert("RGB")) for r in rs]
        shown.append(Shown(title, imgs, [r["prompt"] for r in rs]))
    summary = (
        f"strict fidelity {metrics['strict']:.3f} over {metrics['n']} images "
        f"(seen {_fmt(metrics['strict_seen'])}, held-out {_fmt(metrics['strict_held_out'])})"
    )
    return EvalResult("Caption fidelity (shapes)", metrics, summary, shown)


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def benchmark_prompts(n: int, *, held_out_share: float | None = None) -> str:
    """The first ``n`` canonical shapes eval prompts for a fidelity benchmark, one per line
    (see :func:`.fidelity.fidelity_prompts` for ``held_out_share``)."""
    from tessera.evaluation.fidelity import fidelity_prompts

    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    return "\n".join(fidelity_prompts(n, held_out_share=held_out_share)) + "\n"


def run_clip_score(manifest: str | Path, *, clip: str | Path, batch_size: int = 32) -> EvalResult:
    """CLIP score (100 * mean of max(cosine, 0)) of a manifest's (prompt, image) pairs with the
    CLIP checkpoint ``clip``; entries without a prompt are skipped and counted."""
    import torch

    from tessera.evaluation.manifest import ImageSet
    from tessera.sampling.rerank import load_scorer

    scorer = load_scorer(clip, batch_size=batch_size)
    images = ImageSet(manifest)
    cos: list[float] = []
    batch: list[tuple[str, np.ndarray]] = []
    shown: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            x = torch.from_numpy(np.stack([im for _, im in batch])).permute(0, 3, 1, 2) / 255.0
            cos.extend(scorer(x.float(), [p for p, _ in batch]).tolist())
            batch.clear()

    for entry, img in images:
        if entry.prompt is None:
            images.report.skip("prompt_missing", str(entry.file))
            continue
        if batch and (len(batch) == batch_size or img.shape != batch[0][1].shape):
            flush()
        batch.append((entry.prompt, img))
        if len(shown) < SHOWN:
            shown.append(img)
    flush()
    if not cos:
        raise DataError(f"no (prompt, image) pair in {manifest} could be scored")
    c = np.asarray(cos)
    metrics = {
        "clip_score": float(np.mean(100 * np.maximum(c, 0))),
        "cosine_mean": float(c.mean()),
        "cosine_std": float(c.std()),
        "n": int(c.size),
        "clip": clip,
        "skipped": images.report.to_dict()["skipped"],
    }
    summary = f"CLIP score {metrics['clip_score']:.2f} (mean cosine {c.mean():.4f}, n={c.size})"
    return EvalResult("CLIP score", metrics, summary, [Shown("Images", shown)])


def run_zero_shot_fid(
    protocol: str,
    data: str | Path,
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    samples: str | Path | None = None,
    clip: str | Path | None = None,
    features: str = "inception",
    inception: str | Path | None = None,
    n: int = 30_000,
    image_size: int = 256,
    blur_radii: str | Sequence[float] = (0.0,),
    candidates: int = 1,
    seed: int = 0,
    batch_size: int = 32,
    progress: bool = True,
) -> EvalResult:
    """The paper's zero-shot FID (``coco`` or ``cub``, see :mod:`.protocols`) of the pipeline
    folder ``model`` (optionally reranking ``candidates`` with the CLIP ``clip``) or of the
    already generated manifest ``samples``. ``blur_radii`` may be the text of ``--blur``."""
    from tessera.evaluation.features import open_extractor
    from tessera.evaluation.protocols import run_protocol

    if n < 2 or candidates < 1 or image_size < 16:
        raise ConfigError("need --n >= 2, --candidates >= 1 and --image-size >= 16")
    if (model is None) == (samples is None):
        raise ConfigError("give exactly one of --model (generate) and --samples (re-score)")
    pipe = None
    if model:
        from tessera.pipelines import load_pipeline

        pipe = load_pipeline(model, **({"clip": clip} if clip else {}))
        if candidates > 1 and "rerank" not in pipe.capabilities:
            raise ConfigError(
                "--candidates > 1 needs --clip DIR (or a pipeline folder with a CLIP) to rank them"
            )
    extractor = open_extractor(features, inception=inception)
    result = run_protocol(
        protocol,
        data,
        out_dir,
        extractor=extractor,
        pipeline=pipe,
        samples=samples,
        n=n,
        image_size=image_size,
        blur_radii=parse_blur_radii(blur_radii) if isinstance(blur_radii, str) else blur_radii,
        candidates=candidates,
        seed=seed,
        batch=batch_size,
        progress=progress,
    )
    m = result.metrics
    m["model"] = model
    summary = (
        f"{protocol} FID {m['fid']:.4f} (n={m['n_generated']}, blur radii "
        f"{list(m['fid_by_blur_radius'])})"
    )
    shown = [
        Shown("Real images", result.real_grid),
        Shown("Generated", result.generated_grid, result.captions),
    ]
    return EvalResult(f"Zero-shot FID: {protocol}", m, summary, shown)

"""``tessera eval fid | is | fidelity | clip-score | coco | cub``: metrics from image files.

Every command writes ``OUT/metrics.json`` and a self-contained ``OUT/report.html`` (sample
grids and plots embedded) and prints the headline number.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

IMAGE_SET = "a folder of images, a manifest .jsonl (prompt + file per line) or one image"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("fid", help="Fréchet distance between two image sets")
    p.add_argument("real", help=f"reference set: {IMAGE_SET}, or a statistics .npz")
    p.add_argument("generated", help=f"generated set: {IMAGE_SET}, or a statistics .npz")
    _features_args(p)
    p.add_argument("--blur", default="0", help="Gaussian blur radii applied to both sets: 0,1,2")
    p.add_argument("--save-stats", help="write the reference set's statistics (.npz) here")
    _common(p)
    p.set_defaults(func=_fid)

    p = subparsers.add_parser("is", help="Inception Score of an image set")
    p.add_argument("generated", help=IMAGE_SET)
    p.add_argument("--inception", help="FID Inception weights (or $TESSERA_INCEPTION_WEIGHTS)")
    p.add_argument("--splits", type=int, default=10, help="splits (default 10)")
    _common(p)
    p.set_defaults(func=_is)

    p = subparsers.add_parser("fidelity", help="caption fidelity of shapes images (the checker)")
    p.add_argument("manifest", help="manifest .jsonl of (prompt, file), e.g. from generate")
    p.add_argument("--out", default="out/eval", help="output directory")
    p.set_defaults(func=_fidelity)

    p = subparsers.add_parser(
        "prompts",
        help="canonical shapes eval prompts for a fidelity benchmark",
        description=(
            "Print (or write with --out) the first --n canonical prompts of the shapes eval "
            "split, one per line; --held-out-share S makes that share name a held-out pair."
        ),
    )
    p.add_argument("--n", type=int, default=300, help="prompts (default 300)")
    p.add_argument("--held-out-share", type=float, help="e.g. 0.5 (default: eval order)")
    p.add_argument("--out", help="file to write (default: stdout)")
    p.set_defaults(func=_prompts)

    p = subparsers.add_parser("clip-score", help="CLIP score of (prompt, image) pairs")
    p.add_argument("manifest", help="manifest .jsonl of (prompt, file)")
    p.add_argument("--clip", required=True, help="tessera CLIP checkpoint directory")
    _common(p)
    p.set_defaults(func=_clip_score)

    for name, what in (("coco", "MS-COCO validation captions"), ("cub", "CUB test split")):
        p = subparsers.add_parser(
            name,
            help=f"zero-shot FID on {what} (the paper's protocol)",
            description=(
                f"Generate one image per caption of the first --n images of the {what}, "
                "then FID against those real images at --image-size, for every --blur radius "
                "(both sets blurred). --samples re-scores a manifest instead of generating."
            ),
        )
        p.add_argument("--data", required=True, help=f"{name.upper()} root directory")
        p.add_argument("--model", help="pipeline directory (RUN_DIR/final)")
        p.add_argument("--samples", help="manifest of already generated images, in caption order")
        p.add_argument("--n", type=int, default=30_000, help="images (paper: 30000)")
        p.add_argument("--image-size", type=int, default=256)
        p.add_argument("--blur", default="0", help="radii, e.g. 0,1,2,4,8; 'sweep' = 0..8")
        p.add_argument("--clip", help="CLIP checkpoint: rerank --candidates, keep the best")
        p.add_argument("--candidates", type=int, default=1, help="samples per caption")
        p.add_argument("--seed", type=int, default=0)
        _features_args(p)
        _common(p)
        p.set_defaults(func=_protocol, protocol=name)


def _features_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", default="inception", help="inception (default) or clip:DIR")
    p.add_argument("--inception", help="FID Inception weights (or $TESSERA_INCEPTION_WEIGHTS)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="out/eval", help="output directory")


def _radii(text: str) -> list[float]:
    from tessera.errors import ConfigError

    if text == "sweep":
        return [float(r) for r in range(9)]
    try:
        radii = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--blur takes comma-separated radii or 'sweep', got {text!r}") from None
    if not radii or any(not 0 <= r <= 64 for r in radii):
        raise ConfigError(f"--blur radii must be in [0, 64], got {text!r}")
    return radii


def _finish(args: argparse.Namespace, title: str, metrics: dict[str, Any], sections: list) -> None:
    from tessera import __version__
    from tessera.reporting.html import Table, write_report

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    provenance = {"tessera": __version__, "command": " ".join(["tessera", *sys.argv[1:]])}
    write_report(
        out / "report.html",
        title=title,
        sections=[Table("Metrics", list(flat.items())), *sections],
        provenance=provenance,
    )
    print(f"wrote {out / 'metrics.json'} and {out / 'report.html'}")


def _image_grid(images: list, title: str, captions: list[str] | None = None) -> list:
    from tessera.reporting.html import Image, grid_png

    if not images:
        return []
    caption = "; ".join(f"{i}. {c}" for i, c in enumerate(captions or [], 1))
    return [Image(title, grid_png(images, ncol=min(8, len(images))), caption)]


def _set_stats(
    spec: str,
    extractor: Any,
    args: argparse.Namespace,
    blur_radius: float,
    keep: tuple[str, ...] = (),
) -> tuple[Any, Any, list]:
    """(Stats, Extracted | None, first images) of an image set or a stats file."""
    from tessera.evaluation.features import extract
    from tessera.evaluation.fid import load_stats
    from tessera.evaluation.manifest import ImageSet

    if spec.endswith(".npz"):
        return load_stats(spec), None, []
    images = ImageSet(spec)
    shown: list = []

    def pixels():
        for _, img in images:
            if len(shown) < 16:
                shown.append(img)
            yield img

    ext = extract(
        pixels(),
        extractor,
        batch_size=args.batch_size,
        blur_radius=blur_radius,
        keep=keep,
        total=len(images),
        progress=not args.no_progress,
        desc=spec,
    )
    return ext.stats.stats(), ext, shown


def _fid(args: argparse.Namespace) -> int:
    from tessera.errors import DataError
    from tessera.evaluation.features import open_extractor
    from tessera.evaluation.fid import frechet_distance
    from tessera.reporting.html import LinePlot

    radii = _radii(args.blur)
    if any(r > 0 for r in radii) and (
        args.real.endswith(".npz") or args.generated.endswith(".npz")
    ):
        raise DataError("--blur needs image sets, not statistics files")
    extractor = open_extractor(args.features, inception=args.inception)
    fids: dict[str, float] = {}
    grids: list = []
    for r in radii:
        real, _, real_shown = _set_stats(args.real, extractor, args, r)
        gen, _, gen_shown = _set_stats(args.generated, extractor, args, r)
        if real.mu.shape != gen.mu.shape:
            raise DataError(f"feature sizes differ: {real.mu.size} vs {gen.mu.size}")
        fids[f"{r:g}"] = frechet_distance(real.mu, real.sigma, gen.mu, gen.sigma)
        if r == radii[0]:
            if args.save_stats:
                real.save(args.save_stats)
            grids = _image_grid(real_shown, "Reference") + _image_grid(gen_shown, "Generated")
            n_real, n_gen, real_hash = real.n, gen.n, real.sha256()
    metrics = {
        "fid": fids[f"{radii[0]:g}"],
        "fid_by_blur_radius": fids,
        "n_real": n_real,
        "n_generated": n_gen,
        "real_stats_sha256": real_hash,
        "features": args.features,
        "extractor": extractor.provenance(),
    }
    print(f"FID {metrics['fid']:.4f} (n_real={n_real}, n_generated={n_gen})")
    plots = []
    if len(radii) > 1:
        points = [(float(k), v) for k, v in fids.items()]
        plots = [LinePlot("FID vs blur radius", "Gaussian blur radius", "FID", {"FID": points})]
    _finish(args, "FID", metrics, [*plots, *grids])
    return 0


def _is(args: argparse.Namespace) -> int:
    import numpy as np

    from tessera.errors import ConfigError
    from tessera.evaluation.features import InceptionExtractor
    from tessera.evaluation.fid import inception_score

    if args.splits < 1:
        raise ConfigError(f"--splits must be >= 1, got {args.splits}")
    extractor = InceptionExtractor(args.inception)
    _, ext, shown = _set_stats(args.generated, extractor, args, 0.0, keep=("logits_unbiased",))
    logits = ext.array("logits_unbiased").astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    mean, std = inception_score(probs, splits=args.splits)
    metrics = {
        "inception_score": mean,
        "inception_score_std": std,
        "n": int(probs.shape[0]),
        "splits": args.splits,
        "extractor": extractor.provenance(),
    }
    print(f"IS {mean:.4f} ± {std:.4f} (n={probs.shape[0]}, {args.splits} splits)")
    _finish(args, "Inception Score", metrics, _image_grid(shown, "Images"))
    return 0


def _fidelity(args: argparse.Namespace) -> int:
    import numpy as np

    from tessera.evaluation.fidelity import CLAIMS, score_manifest
    from tessera.reporting.html import BarPlot

    metrics, records = score_manifest(args.manifest)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "judged.jsonl").open("w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    labels = ["strict", *CLAIMS]
    seen = [metrics["strict_seen"], *metrics["claims_seen"].values()]
    held = [metrics["strict_held_out"], *metrics["claims_held_out"].values()]
    overall = [metrics[k] for k in labels]
    plots = [
        BarPlot("Caption fidelity (all prompts)", labels, _nan(overall), y_max=1.0),
        BarPlot(
            "Seen vs held-out colour-shape pairs",
            labels,
            _nan(seen),
            y_max=1.0,
            values_b=_nan(held),
            label_a="seen",
            label_b="held-out",
        ),
    ]
    from PIL import Image as PILImage

    failed = [r for r in records if not r["passed"]][:16]
    passed = [r for r in records if r["passed"]][:16]
    grids = []
    for title, rs in (("Passed", passed), ("Failed", failed)):
        imgs = [np.asarray(PILImage.open(r["file"]).convert("RGB")) for r in rs]
        grids += _image_grid(imgs, title, [r["prompt"] for r in rs])
    strict = metrics["strict"]
    print(
        f"strict fidelity {strict:.3f} over {metrics['n']} images "
        f"(seen {_fmt(metrics['strict_seen'])}, held-out {_fmt(metrics['strict_held_out'])})"
    )
    _finish(args, "Caption fidelity (shapes)", metrics, [*plots, *grids])
    return 0


def _prompts(args: argparse.Namespace) -> int:
    from tessera.errors import ConfigError
    from tessera.evaluation.fidelity import fidelity_prompts

    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")
    text = "\n".join(fidelity_prompts(args.n, held_out_share=args.held_out_share)) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _nan(values: list) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _clip_score(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from tessera.evaluation.manifest import ImageSet
    from tessera.sampling.rerank import load_scorer

    scorer = load_scorer(args.clip, batch_size=args.batch_size)
    images = ImageSet(args.manifest)
    cos: list[float] = []
    batch: list[tuple[str, np.ndarray]] = []
    shown: list = []

    def flush() -> None:
        if batch:
            x = torch.from_numpy(np.stack([im for _, im in batch])).permute(0, 3, 1, 2) / 255.0
            cos.extend(scorer(x.float(), [p for p, _ in batch]).tolist())
            batch.clear()

    for entry, img in images:
        if entry.prompt is None:
            images.report.skip("prompt_missing", str(entry.file))
            continue
        if batch and (len(batch) == args.batch_size or img.shape != batch[0][1].shape):
            flush()
        batch.append((entry.prompt, img))
        if len(shown) < 16:
            shown.append(img)
    flush()
    from tessera.errors import DataError

    if not cos:
        raise DataError(f"no (prompt, image) pair in {args.manifest} could be scored")
    c = np.asarray(cos)
    metrics = {
        "clip_score": float(np.mean(100 * np.maximum(c, 0))),
        "cosine_mean": float(c.mean()),
        "cosine_std": float(c.std()),
        "n": int(c.size),
        "clip": args.clip,
        "skipped": images.report.to_dict()["skipped"],
    }
    print(f"CLIP score {metrics['clip_score']:.2f} (mean cosine {c.mean():.4f}, n={c.size})")
    _finish(args, "CLIP score", metrics, _image_grid(shown, "Images"))
    return 0


def _protocol(args: argparse.Namespace) -> int:
    from tessera.errors import ConfigError
    from tessera.evaluation.features import open_extractor
    from tessera.evaluation.protocols import run_protocol
    from tessera.reporting.html import LinePlot

    if args.n < 2 or args.candidates < 1 or args.image_size < 16:
        raise ConfigError("need --n >= 2, --candidates >= 1 and --image-size >= 16")
    if (args.model is None) == (args.samples is None):
        raise ConfigError("give exactly one of --model (generate) and --samples (re-score)")
    pipe = None
    if args.model:
        from tessera.pipelines import load_pipeline

        pipe = load_pipeline(args.model, **({"clip": args.clip} if args.clip else {}))
        if args.candidates > 1 and "rerank" not in pipe.capabilities:
            raise ConfigError(
                "--candidates > 1 needs --clip DIR (or a pipeline folder with a CLIP) to rank them"
            )
    extractor = open_extractor(args.features, inception=args.inception)
    result = run_protocol(
        args.protocol,
        args.data,
        args.out,
        extractor=extractor,
        pipeline=pipe,
        samples=args.samples,
        n=args.n,
        image_size=args.image_size,
        blur_radii=_radii(args.blur),
        candidates=args.candidates,
        seed=args.seed,
        batch=args.batch_size,
        progress=not args.no_progress,
    )
    m = result.metrics
    m["model"] = args.model
    print(
        f"{args.protocol} FID {m['fid']:.4f} (n={m['n_generated']}, blur radii "
        f"{list(m['fid_by_blur_radius'])})"
    )
    points = [(float(k), v) for k, v in m["fid_by_blur_radius"].items()]
    sections = [
        LinePlot(
            "FID vs blur radius (both sets blurred)",
            "Gaussian blur radius",
            "FID",
            {args.protocol: points},
        )
    ]
    sections += _image_grid(result.real_grid, "Real images")
    sections += _image_grid(result.generated_grid, "Generated", result.captions)
    _finish(args, f"Zero-shot FID: {args.protocol}", m, sections)
    return 0

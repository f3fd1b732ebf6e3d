"""``tessera eval fid | is | fidelity | clip-score | coco | cub``: metrics from image files.

Every command writes ``OUT/metrics.json`` and a self-contained ``OUT/report.html`` (sample
grids and plots embedded) and prints the headline number.
"""

from __future__ import annotations

import argparse
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
        p.add_argument(
            "--model",
            help="dalle or unclip (the shipped pipelines) or a pipeline directory "
            "(e.g. RUN_DIR/final)",
        )
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


def _finish(args: argparse.Namespace, result: Any, plots: list | None = None) -> int:
    from tessera.reporting.metrics import image_grids, write_metrics_report

    print(result.summary)
    sections = [*(plots or []), *image_grids(result.shown)]
    command = " ".join(["tessera", *sys.argv[1:]])
    paths = write_metrics_report(args.out, result.title, result.metrics, sections, command=command)
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def _options(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The named options, plus the batch size and progress flag of the image-set commands."""
    options = {name: getattr(args, name) for name in names}
    return {**options, "batch_size": args.batch_size, "progress": not args.no_progress}


def _fid(args: argparse.Namespace) -> int:
    from tessera.evaluation.runs import parse_blur_radii, run_fid
    from tessera.reporting.metrics import blur_plot

    radii = parse_blur_radii(args.blur)
    options = _options(args, "features", "inception", "save_stats")
    result = run_fid(args.real, args.generated, blur_radii=radii, **options)
    fids = result.metrics["fid_by_blur_radius"]
    plots = [blur_plot("FID vs blur radius", "FID", fids)] if len(radii) > 1 else []
    return _finish(args, result, plots)


def _is(args: argparse.Namespace) -> int:
    from tessera.evaluation.runs import run_inception_score

    options = _options(args, "inception", "splits")
    return _finish(args, run_inception_score(args.generated, **options))


def _fidelity(args: argparse.Namespace) -> int:
    from tessera.evaluation.runs import run_fidelity
    from tessera.reporting.metrics import fidelity_plots

    result = run_fidelity(args.manifest, args.out)
    return _finish(args, result, fidelity_plots(result.metrics))


def _prompts(args: argparse.Namespace) -> int:
    from tessera.evaluation.runs import benchmark_prompts

    text = benchmark_prompts(args.n, held_out_share=args.held_out_share)
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def _clip_score(args: argparse.Namespace) -> int:
    from tessera.evaluation.runs import run_clip_score

    return _finish(args, run_clip_score(args.manifest, clip=args.clip, batch_size=args.batch_size))


def _protocol(args: argparse.Namespace) -> int:
    from tessera.evaluation.runs import run_zero_shot_fid
    from tessera.reporting.metrics import blur_plot

    names = ("model", "samples", "clip", "features", "inception", "n", "image_size", "seed")
    options = _options(args, *names, "candidates")
    result = run_zero_shot_fid(args.protocol, args.data, args.out, blur_radii=args.blur, **options)
    fids = result.metrics["fid_by_blur_radius"]
    plot = blur_plot("FID vs blur radius (both sets blurred)", args.protocol, fids)
    return _finish(args, result, [plot])

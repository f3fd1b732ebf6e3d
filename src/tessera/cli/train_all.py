"""``tessera train --preset shapes``: the whole pipeline in one command (see
:mod:`tessera.training.recipes`)."""

from __future__ import annotations

import argparse

from tessera.training.recipes import RECIPES  # light: no model or trainer import


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a whole pipeline (DALL·E or unCLIP) in one command",
        description=(
            "Run every stage on the built-in data, in order. DALL·E (shapes, tiny): BPE "
            "tokenizer -> dVAE -> transformer -> CLIP. unCLIP (shapes-unclip, tiny-unclip): "
            "tokenizer and CLIP (shapes-unclip reuses the shipped DALL·E pipeline's) -> "
            "diffusion prior -> AR prior -> decoder -> upsamplers. Re-running resumes: finished "
            "stages are skipped and an interrupted one continues from its last checkpoint. "
            "Writes RUN_DIR/summary.json (wall time and figures per stage)."
        ),
    )
    p.add_argument(
        "--preset", default="shapes", help=f"the recipe: {', '.join(RECIPES)} (default: shapes)"
    )
    p.add_argument("--run-dir", default="runs/shapes", help="output folder (default runs/shapes)")
    p.add_argument("--stages", help="comma-separated subset of the recipe's stages (default: all)")
    p.add_argument(
        "--install",
        help="write the release pipeline folder afterwards (DIR/pipeline; unCLIP: DIR/unclip)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tessera.training.recipes import install, run_recipe

    stages = None
    if args.stages is not None:
        stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    run_recipe(args.preset, args.run_dir, stages=stages, progress=not args.no_progress)
    if args.install:
        install(args.run_dir, args.install)
    return 0

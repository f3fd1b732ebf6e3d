"""``tessera demo``: text to images with the shipped shapes models (``--data``: data only)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="generate images from text with the shipped shapes models (CLIP-reranked)",
        description=(
            "Generate images for a handful of prompts (seen and held-out colour-shape pairs, "
            "one and two objects, sizes, positions, relations) with the shipped shapes models, "
            "rerank them with the shipped CLIP, judge each with the shapes checker, and "
            "complete the top half of real images from their captions. Writes grid.png, "
            "image_prompt.png, index.html and manifest.jsonl. --data runs the data pipeline "
            "demo instead (render, export, read back, tokenize, check)."
        ),
    )
    p.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument(
        "--model",
        default="dalle",
        help="dalle (the shipped shapes DALL·E pipeline, the default; the shipped unCLIP one "
        "runs beside it), unclip (the shipped DALL·E 2 pipeline alone) or a pipeline folder",
    )
    p.add_argument("--clip", help="CLIP checkpoint (default: the pipeline's own)")
    p.add_argument("--candidates", type=int, default=8, help="samples per prompt (default 8)")
    p.add_argument("--keep", type=int, default=4, help="best kept per prompt (default 4)")
    p.add_argument("--seed", type=int, default=0, help="sampling / data seed (default 0)")
    p.add_argument("--data", action="store_true", help="run the data pipeline demo instead")
    p.add_argument("--n-train", type=int, default=2000, help="--data: train examples")
    p.add_argument("--n-eval", type=int, default=500, help="--data: eval examples")
    p.add_argument("--size", type=int, default=64, help="--data: image side in pixels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.data:
        from tessera.apps.demo import run_generation_demo
        from tessera.errors import ConfigError

        if not 1 <= args.keep <= args.candidates:
            raise ConfigError(
                f"need 1 <= --keep <= --candidates, got {args.keep}, {args.candidates}"
            )
        s = run_generation_demo(
            args.out,
            model=args.model,
            clip=args.clip,
            candidates=args.candidates,
            keep=args.keep,
            seed=args.seed,
        )
        print(
            f"{s['prompts']} prompts x best {s['keep']} of {s['candidates']}: "
            f"{100 * s['checker_pass']:.0f}% pass the shapes checker ({s['seconds']:.0f} s)"
        )
        if "unclip_checker_pass" in s:
            print(
                f"DALL·E 2 (unCLIP), the same prompts: {100 * s['unclip_checker_pass']:.0f}% pass "
                f"({s['unclip_seconds']:.0f} s); side_by_side.png"
            )
        also = "image_prompt.png, " if s["image_prompt"] else ""
        print(f"wrote {args.out}/grid.png, {also}index.html, manifest.jsonl")
        return 0
    return _data_demo(args)


def _data_demo(args: argparse.Namespace) -> int:
    from tessera.apps.data_demo import run_data_demo

    s = run_data_demo(
        args.out, n_train=args.n_train, n_eval=args.n_eval, size=args.size, seed=args.seed
    )
    tok, chk, t = s["tokenizer"], s["checker"], s["timings_s"]
    print(
        f"data: {s['train_examples']} train + {s['eval_examples']} eval examples "
        f"({s['train_skipped'] + s['eval_skipped']} skipped), rendered in "
        f"{t['render_export']:.1f}s"
    )
    print(
        f"tokenizer: vocab {tok['vocab_size']}, {tok['eval_captions']} eval captions, "
        f"mean {tok['mean_tokens']} tokens, {tok['truncated']} truncated"
    )
    print(
        f"checker: {chk['passed']}/{chk['image_caption_pairs']} image-caption pairs pass "
        f"({100 * chk['pass_rate']:.2f}%)"
    )
    print(f"wrote {args.out}/summary.json, grid.png, data_report_*.json, tokenizer/")
    return 0

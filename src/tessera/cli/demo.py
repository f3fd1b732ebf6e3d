"""``tessera demo``: the embedded default, end to end (today: the data pipeline)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run the embedded default end to end on the built-in shapes data",
        description=(
            "Run the embedded default on the built-in shapes data set. The generation "
            "pipeline is not built yet, so this runs the data pipeline end to end: render, "
            "export, read back, train the BPE tokenizer, encode, and check every image "
            "against its captions."
        ),
    )
    p.add_argument("--out", default="out/demo", help="output directory (default: out/demo)")
    p.add_argument("--n-train", type=int, default=2000, help="train examples (default 2000)")
    p.add_argument("--n-eval", type=int, default=500, help="eval examples (default 500)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tessera.demo import run_data_demo

    print("tessera demo: the generation pipeline is not built yet; running the data pipeline.")
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

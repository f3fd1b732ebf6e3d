"""``tessera clip train | score``."""

from __future__ import annotations

import argparse

from tessera.cli.train_common import add_train_command


def register(subparsers: argparse._SubParsersAction) -> None:
    add_train_command(subparsers, "clip")
    p = subparsers.add_parser(
        "score",
        help="CLIP similarity of images and texts",
        description=(
            "Score every image against every --text with a CLIP checkpoint (cosine similarity "
            "of the embeddings, in [-1, 1]; higher matches better). Prints one line per "
            "(image, text) pair; --out also writes them as JSON lines."
        ),
    )
    p.add_argument("model", help="CLIP checkpoint directory (e.g. RUN_DIR/final)")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--text", action="append", required=True, help="a text (repeatable)")
    p.add_argument("--out", help="JSON-lines file of {image, text, score}")
    p.add_argument("--batch-size", type=int, default=64, help="images or texts per batch")
    p.set_defaults(func=_score)


def _score(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tessera.data.images import load_images
    from tessera.errors import ConfigError
    from tessera.sampling.rerank import load_scorer

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    scorer = load_scorer(args.model, batch_size=args.batch_size)
    files, images = load_images(args.images, scorer.model.config.image_size)
    sim = scorer.similarity(images, args.text)  # (images, texts)
    records = [
        {"image": f, "text": t, "score": round(float(sim[i, j]), 6)}
        for i, f in enumerate(files)
        for j, t in enumerate(args.text)
    ]
    for r in records:
        print(f"{r['score']:+.4f}\t{r['image']}\t{r['text']}")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return 0

"""``tessera data shapes``: export the built-in shapes data set as PNG+TXT pairs or tar shards."""

from __future__ import annotations

import argparse
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "shapes",
        help="export the built-in shapes data set (folder of PNG+TXT, or webdataset tars)",
        description=(
            "Render N examples of the built-in shapes data set (spec v1) to DIR: a folder of "
            "NNNNNN.png + NNNNNN.txt pairs, or webdataset shards shapes-SPLIT-KKKKK.tar. Output "
            "is byte-identical for the same seed. The train split never shows the held-out "
            "colour-shape pairs; eval holds all pairs."
        ),
    )
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="output directory")
    p.add_argument("--n", type=int, required=True, help="number of examples")
    p.add_argument("--split", choices=("train", "eval"), default="train", help="default: train")
    p.add_argument("--size", type=int, default=None, help="image side S in pixels (default 64)")
    p.add_argument("--seed", type=int, default=None, help="base seed (default 0)")
    p.add_argument(
        "--format", choices=("folder", "webdataset"), default="folder", help="default: folder"
    )
    p.add_argument("--shard-size", type=int, default=1000, help="examples per tar (webdataset)")
    p.add_argument("--config", default=None, help="ShapesConfig JSON file (other settings)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import export_shapes
    from tessera.errors import ConfigError

    if args.n < 1:
        raise ConfigError(f"--n must be >= 1, got {args.n}")

    config = ShapesConfig.from_json(args.config) if args.config else ShapesConfig()
    overrides = {k: v for k, v in (("size", args.size), ("seed", args.seed)) if v is not None}
    config = config.replace(**overrides)  # validated before any work starts
    t0 = time.perf_counter()
    with tqdm(total=max(args.n, 0), unit="img", desc=f"shapes {args.split}") as bar:
        summary = export_shapes(
            args.out,
            n=args.n,
            split=args.split,
            format=args.format,
            shard_size=args.shard_size,
            config=config,
            progress=bar.update,
        )
    dt = time.perf_counter() - t0
    shards = f" in {summary.shards} shards" if summary.shards else ""
    print(
        f"wrote {summary.n} {summary.split} examples ({summary.size} px, seed {summary.seed}) "
        f"to {summary.out_dir} as {summary.format}{shards}: {summary.files} files, "
        f"{dt:.1f} s ({summary.n / max(dt, 1e-9):.0f} img/s)"
    )
    return 0

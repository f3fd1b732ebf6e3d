"""``tessera data inspect SOURCE``: counts, caption and image statistics, a sample grid and
``data_report.json`` for any data source spec."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from tessera.config.data import DataConfig


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (else argparse's one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="statistics, bad-sample counts and a sample grid of a data source",
        description=(
            "Read a data source and print example/caption counts, skip reasons, caption and "
            "image-size statistics; write grid.png, inspect.json and data_report.json. "
            "SOURCE: shapes[:train|:eval], folder:DIR, coco:DIR, cub:DIR, wds:PATTERN, or a "
            "directory / .tar pattern (auto-detected)."
        ),
    )
    p.add_argument("source", metavar="SOURCE", help="data source spec")
    p.add_argument(
        "--n", type=positive_int, default=1000, help="examples to read, >= 1 (default 1000)"
    )
    p.add_argument("--split", default=None, help="split (shapes train|eval, COCO, CUB)")
    p.add_argument(
        "--out", type=Path, default=None, help="output folder (default runs/inspect/NAME)"
    )
    p.add_argument(
        "--grid-size", type=positive_int, default=4, help="K: a K x K sample grid (default 4)"
    )
    p.add_argument("--data-config", default=None, help="DataConfig JSON file (filters, limits)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tessera.data.inspect import inspect_source
    from tessera.data.sources import open_source

    config = DataConfig.from_json(args.data_config) if args.data_config else DataConfig()
    source = open_source(args.source, config=config, split=args.split, n=args.n)
    stats = inspect_source(source, n=args.n, grid_size=args.grid_size, progress=True)
    out = args.out or Path("runs") / "inspect" / _slug(args.source)
    paths = stats.write(out)
    report_path = source.report.write(out)
    print(f"source: {source!r}")
    for line in stats.lines():
        print(line)
    for name, path in [*paths.items(), ("report", report_path)]:
        print(f"wrote {name}: {path}")
    return 0


def _slug(spec: str) -> str:
    name = spec.rstrip("/").replace(":", "-")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).name or name)
    return name.strip("._") or "source"

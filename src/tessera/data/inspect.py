"""Statistics of a data source (counts, captions, image sizes) and a sample grid: the library
behind ``tessera data inspect``."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from itertools import islice
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from tessera.data.example import Example
from tessera.data.report import DataReport
from tessera.data.transforms import center_crop, resize_shorter

__all__ = ["SourceStats", "describe_values", "inspect_source", "make_grid"]

_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)?")


def describe_values(values: Sequence[float]) -> dict[str, float]:
    """min / median / mean / max of a non-empty sequence (zeros if empty)."""
    if not values:
        return {"min": 0, "median": 0, "mean": 0.0, "max": 0}
    return {
        "min": min(values),
        "median": statistics.median(values),
        "mean": round(statistics.fmean(values), 3),
        "max": max(values),
    }


def make_grid(
    images: Sequence[Image.Image], *, cols: int, cell: int = 64, pad: int = 2
) -> Image.Image:
    """Tile images (resized + center-cropped to ``cell`` px squares) on a white canvas,
    ``cols`` per row, ``pad`` px apart."""
    cols = max(1, cols)
    rows = max(1, math.ceil(len(images) / cols))
    grid = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + pad) + pad), "white")
    for i, img in enumerate(images):
        tile = center_crop(resize_shorter(img, cell), cell)
        r, c = divmod(i, cols)
        grid.paste(tile, (pad + c * (cell + pad), pad + r * (cell + pad)))
    return grid


@dataclasses.dataclass
class SourceStats:
    """What :func:`inspect_source` found. Lengths are per caption; sizes in pixels."""

    examples: int
    captions: int
    caption_chars: dict[str, float]
    caption_words: dict[str, float]
    vocabulary_size: int
    common_words: list[tuple[str, int]]
    captions_per_example: dict[str, float]
    image_width: dict[str, float]
    image_height: dict[str, float]
    report: dict[str, Any]
    grid: Image.Image | None = dataclasses.field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(dataclasses.replace(self, grid=None))
        d.pop("grid")
        d["common_words"] = [list(p) for p in self.common_words]
        return d

    def lines(self) -> list[str]:
        """Human-readable summary, one fact per line."""
        r = self.report

        def fmt(s: dict[str, float]) -> str:
            return f"min {s['min']}  median {s['median']}  mean {s['mean']}  max {s['max']}"

        out = [
            f"examples: {self.examples} (seen {r['seen']}, skipped {r['skipped_total']}, "
            f"filtered {sum(r['filtered'].values())})",
            f"captions: {self.captions} ({fmt(self.captions_per_example)} per example)",
        ]
        out += [f"  skipped {k}: {v}" for k, v in r["skipped"].items()]
        out += [f"  filtered {k}: {v}" for k, v in r["filtered"].items()]
        out += [f"  repaired {k}: {v}" for k, v in r["repaired"].items()]
        out += [
            f"caption chars: {fmt(self.caption_chars)}",
            f"caption words: {fmt(self.caption_words)}",
            f"vocabulary: {self.vocabulary_size} words; most common: "
            + ", ".join(f"{w} ({c})" for w, c in self.common_words[:10]),
            f"image width: {fmt(self.image_width)}",
            f"image height: {fmt(self.image_height)}",
        ]
        return out

    def write(self, out_dir: str | Path) -> dict[str, Path]:
        """Write ``inspect.json`` and ``grid.png`` (if any) into ``out_dir``; returns paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"stats": out / "inspect.json"}
        paths["stats"].write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        if self.grid is not None:
            paths["grid"] = out / "grid.png"
            self.grid.save(paths["grid"])
        return paths


def inspect_source(
    source: Iterable[Example],
    *,
    n: int | None = None,
    grid_size: int = 4,
    cell: int = 64,
    top_words: int = 20,
    report: DataReport | None = None,
    progress: bool = False,
) -> SourceStats:
    """Read up to ``n`` examples of ``source`` and summarise them.

    The grid holds the first ``grid_size`` x ``grid_size`` images (``cell`` px each);
    ``report`` defaults to ``source.report``; ``progress`` shows a tqdm bar on stderr.
    """
    chars: list[int] = []
    words: list[int] = []
    per_example: list[int] = []
    widths: list[int] = []
    heights: list[int] = []
    vocab: Counter[str] = Counter()
    thumbs: list[Image.Image] = []
    count = 0
    for ex in tqdm(islice(source, n), total=n, disable=not progress, unit="ex", leave=False):
        count += 1
        per_example.append(len(ex.captions))
        widths.append(ex.image.width)
        heights.append(ex.image.height)
        for c in ex.captions:
            toks = _WORD.findall(c.lower())
            chars.append(len(c))
            words.append(len(toks))
            vocab.update(toks)
        if len(thumbs) < grid_size * grid_size:
            thumbs.append(center_crop(resize_shorter(ex.image, cell), cell))
    report = report if report is not None else getattr(source, "report", None)
    return SourceStats(
        examples=count,
        captions=len(chars),
        caption_chars=describe_values(chars),
        caption_words=describe_values(words),
        vocabulary_size=len(vocab),
        common_words=vocab.most_common(top_words),
        captions_per_example=describe_values(per_example),
        image_width=describe_values(widths),
        image_height=describe_values(heights),
        report=(report or DataReport()).to_dict(),
        grid=make_grid(thumbs, cols=grid_size, cell=cell) if thumbs else None,
    )

"""Data sources behind one interface (an iterable of :class:`~tessera.data.example.Example`),
and :func:`open_source`, which builds one from a spec string.

Specs: ``shapes`` / ``shapes:train`` / ``shapes:eval`` (built-in), ``folder:DIR``,
``coco:DIR``, ``cub:DIR``, ``wds:PATTERN``; a bare directory is auto-detected (COCO, CUB or a
folder of pairs) and a path, brace pattern or glob ending in ``.tar`` is webdataset.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tessera.config.data import DataConfig
from tessera.data.example import Example
from tessera.data.filters import ExampleFilter, Predicate, apply_filters
from tessera.data.report import DataReport
from tessera.data.sources.base import Source, share
from tessera.data.sources.coco import CocoSource
from tessera.data.sources.cub import CubSource
from tessera.data.sources.folder import FolderSource
from tessera.errors import ConfigError, DataError

__all__ = [
    "CocoSource",
    "CubSource",
    "FolderSource",
    "ShapesAdapter",
    "Source",
    "WebDatasetSource",
    "detect_kind",
    "iter_captions",
    "open_source",
]

KINDS = ("shapes", "folder", "coco", "cub", "wds")


def __getattr__(name: str) -> Any:
    if name == "WebDatasetSource":  # imports webdataset lazily (an optional extra)
        from tessera.data.sources.webdataset import WebDatasetSource

        return WebDatasetSource
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class ShapesAdapter(Source):
    """The built-in ``shapes`` data set (``tessera.data.shapes.ShapesSource``) as a
    :class:`Source`: rank/worker split, filters and counting like every other source.

    split: "train" or "eval". shapes_config: how scenes are drawn (default: the default
    ``ShapesConfig`` drawn at ``config.image_size`` when that is a valid shapes size).
    n: examples per rank (None: as many as ``ShapesSource`` yields).
    """

    name = "shapes"

    def __init__(self, split: str = "train", *, shapes_config: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from tessera.config.shapes import ShapesConfig

        if shapes_config is None:
            try:
                shapes_config = ShapesConfig(size=self.config.image_size)
            except ConfigError:
                shapes_config = ShapesConfig()
        self.split = split
        self.shapes_config = shapes_config

    def describe(self) -> str:
        return f"split={self.split}, size={self.shapes_config.size}"

    def iter_partition(self, index: int, count: int) -> Iterator[Example]:
        from tessera.data.shapes import ShapesSource

        stride = self.world_size * count
        offset = self.rank + self.world_size * index
        # Examples are addressed by index, so each rank/worker renders only its own ones.
        stream = ShapesSource(
            self.shapes_config,
            split=self.split,
            n=share(self.n, index, count),
            start=offset,
            step=stride,
        )
        return self._limited(self._checked(stream), None)

    def _checked(self, examples: Iterable[Example]) -> Iterator[Example]:
        for ex in examples:
            self.report.see()
            kept = apply_filters(ex, self.filters, self.report)
            if kept is not None:
                self.report.record_yield()
                yield kept


def detect_kind(path: str | os.PathLike[str]) -> str:
    """``coco``, ``cub``, ``wds`` or ``folder`` for an existing path (see the module doc)."""
    p = Path(path)
    if p.is_file():
        if p.suffix == ".tar":
            return "wds"
        raise DataError(f"not a data source (expected a directory or .tar shards): {p}")
    if any((p / "annotations").glob("captions_*.json")):
        return "coco"
    if (p / "CUB_200_2011").is_dir() or (
        (p / "images.txt").is_file()
        and ((p / "text_c10").is_dir() or (p.parent / "text_c10").is_dir())
    ):
        return "cub"
    if any(p.glob("*.tar")) and not any(p.rglob("*.txt")):
        return "wds"
    return "folder"


def _coco_split(root: Path, split: str | None) -> str:
    if split is not None:
        return split
    found = sorted(
        f.stem[len("captions_") :] for f in (root / "annotations").glob("captions_*.json")
    )
    for preferred in ("val2014", "val2017"):
        if preferred in found:
            return preferred
    if not found:
        raise DataError(f"no annotations/captions_*.json under {root}")
    return found[0]


def open_source(
    spec: str,
    *,
    config: DataConfig | None = None,
    split: str | None = None,
    report: DataReport | None = None,
    rank: int = 0,
    world_size: int = 1,
    n: int | None = None,
    predicates: Iterable[Predicate | ExampleFilter] = (),
    **options: Any,
) -> Source:
    """Build a data source from a spec string (see the module docstring).

    split: shapes "train"/"eval" (default train), COCO split name (default: val2014 or
    val2017, whichever exists), CUB "train"/"test" (the class-disjoint 150/50 split of
    text-to-image work; default test), "cub_train"/"cub_test" (CUB's own image split) or
    "all"; ignored otherwise.
    rank / world_size: this process's share (every ``world_size``-th example; whole shards
    for webdataset). n: at most this many examples per rank. ``options`` go to the source
    class (e.g. ``resampled=True, epoch_length=...`` for webdataset, ``classes_file=`` for
    CUB). A missing path or an
    unknown layout raises :class:`DataError`.
    """
    common: dict[str, Any] = dict(
        config=config, report=report, rank=rank, world_size=world_size, n=n, predicates=predicates
    )
    kind, sep, rest = spec.partition(":")
    if spec == "shapes":
        kind = "shapes"
    elif not sep or kind not in KINDS:
        kind, rest = "", spec
    if kind == "shapes":
        shapes_split = rest or split or "train"
        if shapes_split not in ("train", "eval"):
            raise DataError(f"shapes split must be train or eval, got {shapes_split!r}")
        return ShapesAdapter(shapes_split, **common, **options)
    if not rest:
        raise DataError(f"data source spec {spec!r} names no path")
    if kind == "wds" or (not kind and _looks_like_shards(rest)):
        from tessera.data.sources.webdataset import WebDatasetSource

        return WebDatasetSource(rest, **common, **options)
    path = Path(rest).expanduser()
    if not path.exists():
        raise DataError(f"data source not found: {path}")
    kind = kind or detect_kind(path)
    if kind == "coco":
        return CocoSource(path, _coco_split(path, split), **common, **options)
    if kind == "cub":
        return CubSource(path, split or "test", **common, **options)
    if kind == "wds":
        from tessera.data.sources.webdataset import WebDatasetSource

        return WebDatasetSource(str(path), **common, **options)
    return FolderSource(path, **common, **options)


def _looks_like_shards(text: str) -> bool:
    return text.endswith(".tar") or (
        any(c in text for c in "*?[{") and text.rstrip("}").endswith(".tar")
    )


DEFAULT_CAPTION_EXAMPLES = 10_000


def iter_captions(source: str, n: int | None = None) -> Iterator[str]:
    """Captions of a ``.txt`` file (one per line, stripped, blank lines skipped; the first
    ``n`` or all) or of the first ``n`` examples of a data source spec (default 10,000)."""
    path = Path(source)
    if path.suffix == ".txt":
        try:
            with path.open(encoding="utf-8") as f:
                yield from itertools.islice(filter(None, (line.strip() for line in f)), n)
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read captions from {path}: {e}") from None
        return
    for example in open_source(source, n=n if n is not None else DEFAULT_CAPTION_EXAMPLES):
        yield from example.captions

"""Example filters: caption length, aspect ratio, and user predicates, counted by name.

A filter takes an :class:`Example` and returns it (possibly with some captions dropped) or
``None`` to drop it; every drop is counted in the :class:`DataReport` under the filter's
``name``. Filtering is policy, not a defect: it does not count towards the bad fraction.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Protocol

from tessera.config.data import DataConfig
from tessera.data.example import Example
from tessera.data.report import DataReport

__all__ = [
    "AspectRatioFilter",
    "CaptionLengthFilter",
    "ExampleFilter",
    "Predicate",
    "PredicateFilter",
    "apply_filters",
    "aspect_ok",
    "build_filters",
    "caption_length_ok",
]

Predicate = Callable[[Example], bool]


class ExampleFilter(Protocol):
    """A named callable: ``filter(example, report) -> example or None``."""

    name: str

    def __call__(self, example: Example, report: DataReport) -> Example | None: ...


def caption_length_ok(caption: str, min_chars: int, max_chars: int) -> bool:
    """True if ``min_chars <= len(caption) <= max_chars`` (characters, after stripping)."""
    return min_chars <= len(caption) <= max_chars


def aspect_ok(width: int, height: int, min_aspect: float, max_aspect: float) -> bool:
    """True if ``min_aspect <= width / height <= max_aspect`` (the paper keeps [1/2, 2])."""
    return height > 0 and min_aspect <= width / height <= max_aspect


@dataclasses.dataclass(frozen=True)
class CaptionLengthFilter:
    """Drop captions outside [min_chars, max_chars]; drop the example if none is left.

    Dropped captions are counted as repairs ``caption_dropped_too_short`` /
    ``caption_dropped_too_long``; a dropped example as filter ``caption_length``.
    """

    min_chars: int
    max_chars: int
    name: str = "caption_length"

    def __call__(self, example: Example, report: DataReport) -> Example | None:
        kept = []
        for c in example.captions:
            if len(c) < self.min_chars:
                report.repair("caption_dropped_too_short", example.key)
            elif len(c) > self.max_chars:
                report.repair("caption_dropped_too_long", example.key)
            else:
                kept.append(c)
        if not kept:
            report.filter(self.name, example.key)
            return None
        if len(kept) == len(example.captions):
            return example
        return dataclasses.replace(example, captions=tuple(kept))


@dataclasses.dataclass(frozen=True)
class AspectRatioFilter:
    """Drop images whose width/height lies outside [min_aspect, max_aspect]."""

    min_aspect: float
    max_aspect: float
    name: str = "aspect_ratio"

    def __call__(self, example: Example, report: DataReport) -> Example | None:
        w, h = example.image.size
        if aspect_ok(w, h, self.min_aspect, self.max_aspect):
            return example
        report.filter(self.name, example.key)
        return None


@dataclasses.dataclass(frozen=True)
class PredicateFilter:
    """Keep examples for which ``predicate(example)`` is true; counted under ``name``."""

    predicate: Predicate
    name: str

    def __call__(self, example: Example, report: DataReport) -> Example | None:
        if self.predicate(example):
            return example
        report.filter(self.name, example.key)
        return None


def build_filters(
    config: DataConfig, predicates: Iterable[Predicate | ExampleFilter] = ()
) -> list[ExampleFilter]:
    """The config's filters (caption length, aspect ratio) followed by user predicates.

    A plain ``Callable[[Example], bool]`` is wrapped in :class:`PredicateFilter` and counted
    under its ``__name__`` (lambdas: ``predicate_<i>``).
    """
    out: list[ExampleFilter] = [
        CaptionLengthFilter(config.min_caption_chars, config.max_caption_chars),
        AspectRatioFilter(config.min_aspect, config.max_aspect),
    ]
    for i, p in enumerate(predicates):
        if isinstance(getattr(p, "name", None), str):
            out.append(p)  # type: ignore[arg-type]
        else:
            name = getattr(p, "__name__", "")
            if not name or name == "<lambda>":
                name = f"predicate_{i}"
            out.append(PredicateFilter(p, name))  # type: ignore[arg-type]
    return out


def apply_filters(
    example: Example, filters: Sequence[ExampleFilter], report: DataReport
) -> Example | None:
    """Run ``filters`` in order; None as soon as one drops the example."""
    for f in filters:
        example = f(example, report)  # type: ignore[assignment]
        if example is None:
            return None
    return example

"""What every data source shares: decoding, caption checks, filters, counting, rank/worker split.

A source lists *candidates* (a key, an image path or bytes, a way to read the captions) in a
deterministic order; :class:`Source` does the rest: it keeps every ``world_size``-th candidate
for its rank (and every ``num_workers``-th of those for a DataLoader worker) BEFORE decoding,
so no work is duplicated, decodes with :func:`~tessera.data.image_io.load_image_with_repairs`,
skips and counts bad examples, applies the filters and yields :class:`Example` objects.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

from tessera.config.data import DataConfig
from tessera.data.example import Example
from tessera.data.filters import ExampleFilter, Predicate, apply_filters, build_filters
from tessera.data.image_io import BadSampleError, load_image_with_repairs, read_file_capped
from tessera.data.report import DataReport
from tessera.errors import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "Candidate",
    "Source",
    "parse_captions",
    "read_caption_file",
    "worker_partition",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")


@dataclasses.dataclass(frozen=True, slots=True)
class Candidate:
    """One not-yet-decoded example: ``image`` is a file path or the encoded bytes;
    ``captions`` returns the captions or raises :class:`BadSampleError`. ``error``, when set,
    is why the candidate is unusable before anything is read (an unlistable directory, an
    oversized tar member); it is counted under its reason like any other skip."""

    key: str
    image: Path | bytes | None
    captions: Callable[[], Sequence[str]]
    error: BadSampleError | None = None


def parse_captions(data: bytes, *, one_per_line: bool = True) -> tuple[str, ...]:
    """Captions from a caption file's bytes: strict UTF-8 (a BOM is ignored), stripped.

    With ``one_per_line`` each non-blank line is a caption; otherwise the whole text is one.
    Raises :class:`BadSampleError` with reason ``caption_not_utf8`` or ``caption_empty``.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise BadSampleError("caption_not_utf8", f"caption is not UTF-8 ({e.reason})") from None
    lines = text.splitlines() if one_per_line else [text]
    captions = tuple(s for s in (line.strip() for line in lines) if s)
    if not captions:
        raise BadSampleError("caption_empty", "caption is empty or whitespace only")
    return captions


def read_caption_file(
    path: Path, *, one_per_line: bool = True, max_bytes: int = DataConfig.max_caption_bytes
) -> tuple[str, ...]:
    """:func:`parse_captions` of a file; a missing file is ``caption_missing``, an unreadable
    one ``caption_unreadable``. Only regular files are read (a FIFO or device file named
    ``x.txt`` is ``unreadable_path``), and at most ``max_bytes`` of them (``file_too_large``)."""
    data = read_file_capped(
        path, max_bytes, missing="caption_missing", unreadable="caption_unreadable"
    )
    return parse_captions(data, one_per_line=one_per_line)


def worker_partition() -> tuple[int, int]:
    """(worker id, number of workers) of the current DataLoader worker; (0, 1) outside one."""
    from torch.utils.data import get_worker_info

    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


def share(n: int | None, index: int, count: int) -> int | None:
    """Part ``index`` of ``count`` of ``n`` items (the first ``n % count`` parts get one more)."""
    if n is None:
        return None
    return n // count + (1 if index < n % count else 0)


class Source:
    """An iterable of :class:`Example`; see the module docstring.

    config: decoding limits, filters and bad-sample policy.
    report: where counts go (created if not given; exposed as ``.report``).
    rank / world_size: this process's share — every ``world_size``-th candidate from
      ``rank``; ``0 <= rank < world_size``.
    n: stop after yielding this many examples (per rank; split across DataLoader workers).
    predicates: extra filters ``Callable[[Example], bool]`` (or named filter objects).
    """

    name = "source"

    def __init__(
        self,
        *,
        config: DataConfig | None = None,
        report: DataReport | None = None,
        rank: int = 0,
        world_size: int = 1,
        n: int | None = None,
        predicates: Iterable[Predicate | ExampleFilter] = (),
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise DataError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        if n is not None and n < 0:
            raise DataError(f"n must be >= 0, got {n}")
        self.config = config or DataConfig()
        self.report = report if report is not None else DataReport(self.config)
        self.rank = rank
        self.world_size = world_size
        self.n = n
        self.filters: list[ExampleFilter] = build_filters(self.config, predicates)

    def candidates(self) -> Iterator[Candidate]:
        """All candidates of the source (every rank's), in a fixed order.

        File-backed sources implement this; sources that produce decoded examples (shapes)
        override :meth:`iter_partition` instead.
        """
        raise NotImplementedError(f"{type(self).__name__} does not list candidates")

    def __iter__(self) -> Iterator[Example]:
        return self.iter_partition(*worker_partition())

    def iter_partition(self, index: int, count: int) -> Iterator[Example]:
        """Examples of part ``index`` of ``count`` of this rank's share (DataLoader workers)."""
        stride = self.world_size * count
        offset = self.rank + self.world_size * index
        mine = islice(self.candidates(), offset, None, stride)
        return self._limited(self._examples(mine), share(self.n, index, count))

    def _limited(self, examples: Iterator[Example], limit: int | None) -> Iterator[Example]:
        try:
            yield from examples if limit is None else islice(examples, limit)
        finally:
            self.report.log_summary()

    def _examples(self, candidates: Iterable[Candidate]) -> Iterator[Example]:
        for cand in candidates:
            ex = self.process(cand)
            if ex is not None:
                yield ex

    def process(self, cand: Candidate) -> Example | None:
        """Decode, check and filter one candidate; counts everything in :attr:`report`."""
        report = self.report
        report.see()
        try:
            if cand.error is not None:
                raise cand.error
            captions = tuple(cand.captions())
            if cand.image is None:
                raise BadSampleError("image_missing", f"{cand.key}: no image")
            image, repairs = load_image_with_repairs(cand.image, self.config)
        except BadSampleError as e:
            report.skip(e.reason, cand.key, str(e))
            return None
        for r in repairs:
            report.repair(r, cand.key)
        example = apply_filters(
            Example(image=image, captions=captions, key=cand.key), self.filters, report
        )
        if example is not None:
            report.record_yield()
        return example

    def __repr__(self) -> str:
        part = f", rank={self.rank}/{self.world_size}" if self.world_size > 1 else ""
        return f"{type(self).__name__}({self.describe()}{part})"

    def describe(self) -> str:
        """A short human description (the path, the split)."""
        return ""


def check_dir(path: str | os.PathLike[str], what: str) -> Path:
    """``path`` as a Path if it is a directory, else a one-line :class:`DataError`."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"{what} not found: {p}")
    if not p.is_dir():
        raise DataError(f"{what} is not a directory: {p}")
    return p

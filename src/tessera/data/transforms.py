"""Image transforms (pure functions), a composed per-example transform, batching, and the
``IterableDataset`` that feeds a ``DataLoader`` from any source.

Images enter as 8-bit RGB ``PIL.Image`` and leave as float32 tensors ``(3, S, S)`` in [0, 1].
Random crops take a ``torch.Generator`` or an integer seed; :class:`ImageTransform` derives
each example's generator from ``(seed, epoch, key)``, so crops do not depend on worker
count, order or process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset

from tessera.data.example import Example
from tessera.data.report import REPORT_KEY, DataReport, ReportDelta
from tessera.errors import ConfigError

__all__ = [
    "ImageTextDataset",
    "ImageTransform",
    "center_crop",
    "collate",
    "example_generator",
    "random_crop",
    "resize_shorter",
    "to_tensor",
]

logger = logging.getLogger("tessera.data")

Resample = Literal["bicubic", "lanczos"]
_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def resize_shorter(
    img: Image.Image, size: int, *, resample: Resample = "bicubic", reducing_gap: float | None = 3.0
) -> Image.Image:
    """Resize so the shorter side is ``size`` pixels, keeping the aspect ratio (the longer side
    is rounded, and never below ``size``). Antialiased: Pillow's filters widen when shrinking;
    ``reducing_gap`` first reduces by an integer factor (faster, same quality at >= 3)."""
    if size < 1:
        raise ConfigError(f"resize size must be >= 1, got {size}")
    w, h = img.size
    if min(w, h) == size:
        return img
    if w <= h:
        new = (size, max(size, round(h * size / w)))
    else:
        new = (max(size, round(w * size / h)), size)
    return img.resize(new, _RESAMPLE[resample], reducing_gap=reducing_gap)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The central ``size`` x ``size`` crop (image sides must be >= ``size``)."""
    w, h = img.size
    _check_crop(w, h, size)
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def random_crop(
    img: Image.Image, size: int, generator: torch.Generator | int | None = None
) -> Image.Image:
    """A uniformly placed ``size`` x ``size`` crop; reproducible for a given generator/seed."""
    w, h = img.size
    _check_crop(w, h, size)
    if isinstance(generator, int):
        generator = torch.Generator().manual_seed(generator)
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    return img.crop((left, top, left + size, top + size))


def _check_crop(w: int, h: int, size: int) -> None:
    if w < size or h < size:
        raise ValueError(f"cannot crop {size}x{size} from a {w}x{h} image; resize first")


def to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB ``PIL.Image`` (H, W) -> float32 tensor ``(3, H, W)`` with values in [0, 1]."""
    a = np.asarray(img.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)


def example_generator(seed: int, epoch: int, key: str) -> torch.Generator:
    """A generator seeded from ``(seed, epoch, key)`` (stable across processes and runs)."""
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & (2**63 - 1))


@dataclasses.dataclass
class ImageTransform:
    """Example -> ``{"image": (3, S, S) float32 in [0, 1], "captions": tuple, "key": str}``.

    size: output side S (pixels). train: random crop (else center crop). seed / epoch: the
    crop position of an example depends only on (seed, epoch, key); call :meth:`set_epoch`.
    """

    size: int
    train: bool = False
    seed: int = 0
    epoch: int = 0
    resample: Resample = "bicubic"

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def image(self, img: Image.Image, key: str = "") -> torch.Tensor:
        """Resize + crop + to_tensor for one image."""
        img = resize_shorter(img, self.size, resample=self.resample)
        if self.train:
            img = random_crop(img, self.size, example_generator(self.seed, self.epoch, key))
        else:
            img = center_crop(img, self.size)
        return to_tensor(img)

    def __call__(self, example: Example) -> dict[str, Any]:
        return {
            "image": self.image(example.image, example.key),
            "captions": example.captions,
            "key": example.key,
        }


def collate(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Batch transformed examples: ``images`` (B, 3, S, S), ``captions`` (list of tuples),
    ``keys`` (list of str). Use as ``DataLoader(..., collate_fn=collate)``.

    In a DataLoader worker, items carry the worker's data-report counts under
    ``"data_report"``; the batch carries them on, combined, under the same key (they merge
    into the main process's report when the batch arrives there; see
    :class:`ImageTextDataset`). A custom ``collate_fn`` should do the same:
    ``ReportDelta.combine(it["data_report"] for it in items if "data_report" in it)``."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    batch = {
        "images": torch.stack([it["image"] for it in items]),
        "captions": [it["captions"] for it in items],
        "keys": [it["key"] for it in items],
    }
    deltas = [it[REPORT_KEY] for it in items if REPORT_KEY in it]
    if deltas:
        batch[REPORT_KEY] = ReportDelta.combine(deltas)
    return batch


_END = object()


class ImageTextDataset(IterableDataset):
    """A source (any iterable of :class:`Example`) as a ``torch`` ``IterableDataset``.

    In a DataLoader worker, each worker reads a disjoint part of the source (sources with
    ``iter_partition`` split before decoding; others are strided), so no example is
    duplicated. ``transform`` maps an Example to what the loader batches (default:
    identity).

    Bad-sample counts with workers: each worker counts into a fresh report of its own and
    sends its counts on with the items it yields (a :class:`~tessera.data.report.ReportDelta`
    under ``item["data_report"]``; one item is held back so that the counts made after the
    last item travel with it). :func:`collate` passes them on in the batch; when the main
    process receives the batch, they merge into the source's own ``source.report`` and the
    bad fraction is checked on the merged totals, so after a DataLoader pass
    ``source.report`` has every worker's counts and ``TooManyBadSamplesError`` is raised in
    the training loop. Counts travel with dict items only (what :class:`ImageTransform`
    returns); with other items each worker keeps, checks and logs its own counts. A worker
    that yields no item at all cannot send its counts: it logs them as a warning.
    """

    def __init__(
        self, source: Iterable[Example], transform: Callable[[Example], Any] | None = None
    ) -> None:
        super().__init__()
        self.source = source
        self.transform = transform

    @property
    def report(self) -> DataReport | None:
        """The source's report (in the main process: the merged counts of every worker)."""
        return getattr(self.source, "report", None)

    def set_epoch(self, epoch: int) -> None:
        """Pass the epoch to the source and the transform (shard shuffles, crop seeds)."""
        for obj in (self.source, self.transform):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)

    def __iter__(self) -> Iterator[Any]:
        info = torch.utils.data.get_worker_info()
        index, count = (info.id, info.num_workers) if info is not None else (0, 1)
        local = self._worker_report() if info is not None else None
        if hasattr(self.source, "iter_partition"):
            examples = self.source.iter_partition(index, count)
        else:
            examples = islice(iter(self.source), index, None, count)
        items = examples if self.transform is None else map(self.transform, examples)
        if local is None:
            return items
        return _forward_counts(items, local, index, count)

    def _worker_report(self) -> DataReport | None:
        """In a worker: give the (worker's copy of the) source a fresh report whose counts
        are sent to the main process's report; None if the source has no report to send to,
        or is not split across workers (each worker would count every example)."""
        report = getattr(self.source, "report", None)
        if not isinstance(report, DataReport) or not hasattr(self.source, "iter_partition"):
            return None
        local = DataReport(report.config, max_keys=report.max_keys)
        local.forward_to = report.forward_to or report.uid
        self.source.report = local  # type: ignore[attr-defined]
        return local


def _forward_counts(
    items: Iterator[Any], local: DataReport, worker: int, workers: int
) -> Iterator[Any]:
    """Yield ``items``; each dict item carries the counts made up to the production of the
    next one (the last item: all remaining counts). ``local`` is emptied whenever an item is
    produced, so its own bad-fraction check covers only the examples since the last one."""
    it = iter(items)
    held = next(it, _END)
    if held is not _END and not isinstance(held, dict):
        local.forward_to = None  # cannot carry counts: an ordinary per-worker report
        yield held
        yield from it
        return
    carry = DataReport(local.config, max_keys=local.max_keys)  # counts not yet sent
    carry.merge_state(local.take_state())
    for item in it:
        carry.merge_state(local.take_state())
        yield _with_counts(held, carry, local.forward_to, workers, final=False)
        held = item
    carry.merge_state(local.take_state())
    if held is not _END:
        yield _with_counts(held, carry, local.forward_to, workers, final=True)
    elif not carry.is_empty():
        logger.warning(
            "DataLoader worker %d of %d yielded no example, so its counts cannot reach the "
            "main process: %s",
            worker,
            workers,
            carry.summary(),
        )


def _with_counts(
    item: Any, carry: DataReport, target: str | None, workers: int, *, final: bool
) -> Any:
    if not isinstance(item, dict) or target is None:
        return item  # the counts wait for the next dict item
    if carry.is_empty() and not final:
        return item
    delta = ReportDelta(target, carry.take_state(), final=final, workers=workers)
    return {**item, REPORT_KEY: delta}

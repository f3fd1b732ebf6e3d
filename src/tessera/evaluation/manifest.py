"""Evaluation reads images from files, so any generator can be scored (DESIGN rule 9).

A manifest is JSON lines, one sample per line, with at least ``prompt`` and ``file`` (a path
relative to the manifest's folder); other keys (``seed``, ``clip_score``, ...) are kept.
``tessera generate`` writes one. An image set (the REAL / GEN arguments of ``tessera eval``)
is a manifest, a folder of images (searched recursively, sorted), or a single image file.

Unreadable entries are skipped and counted by reason (``DataReport``), never fatal one by one;
a manifest that is not JSON lines, or a set with no readable image, is a one-line error.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tessera.data.image_io import BadSampleError, load_image
from tessera.data.report import DataReport
from tessera.data.sources.base import IMAGE_SUFFIXES
from tessera.errors import DataError

__all__ = ["Entry", "ImageSet", "read_manifest", "write_manifest"]

logger = logging.getLogger("tessera.evaluation")


@dataclass(frozen=True)
class Entry:
    """One image of a set: its file, and its prompt when the set came from a manifest."""

    file: Path
    prompt: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def read_manifest(path: str | Path) -> list[Entry]:
    """Parse a JSON-lines manifest; ``file`` is resolved against the manifest's folder."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"manifest not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read manifest {path}: {e}") from None
    entries = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: not a JSON object ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("file"), str):
            raise DataError(f"{path}:{lineno}: each line needs a string 'file' (and 'prompt')")
        prompt = record.pop("prompt", None)
        if prompt is not None and not isinstance(prompt, str):
            raise DataError(f"{path}:{lineno}: 'prompt' must be a string")
        file = path.parent / record.pop("file")
        entries.append(Entry(file=file, prompt=prompt, extra=record))
    if not entries:
        raise DataError(f"manifest {path} lists no images")
    return entries


def write_manifest(path: str | Path, entries: list[Entry]) -> Path:
    """Write entries as JSON lines with ``file`` relative to the manifest's folder."""
    path = Path(path)
    with path.open("w", encoding="utf-8") as f:
        for e in entries:
            record: dict[str, Any] = {"prompt": e.prompt, "file": _relative(e.file, path.parent)}
            record.update(e.extra)
            f.write(json.dumps(record) + "\n")
    return path


def _relative(file: Path, base: Path) -> str:
    try:
        return file.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(file.resolve())


class ImageSet:
    """The images of a manifest, folder or file, read as uint8 (H, W, 3) RGB arrays.

    ``report`` counts skipped entries (``image_missing``, ``image_corrupt``, ...) by reason.
    """

    def __init__(self, spec: str | Path, *, report: DataReport | None = None) -> None:
        p = Path(spec)
        self.spec = p
        self.report = report if report is not None else DataReport()
        if p.is_dir():
            files = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            self.entries = [Entry(file=f) for f in files]
            if not self.entries:
                raise DataError(f"no images under {p}")
        elif p.is_file() and p.suffix.lower() in (".jsonl", ".json"):
            self.entries = read_manifest(p)
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            self.entries = [Entry(file=p)]
        elif not p.exists():
            raise DataError(f"image set not found: {p} (a folder, a manifest .jsonl or an image)")
        else:
            raise DataError(f"not an image set: {p} (a folder, a manifest .jsonl or an image)")

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[tuple[Entry, np.ndarray]]:
        """Readable entries with their pixels; unreadable ones are counted and logged."""
        for entry in self.entries:
            self.report.see()
            try:
                image = load_image(entry.file)
            except BadSampleError as e:
                self.report.skip(e.reason, str(entry.file), str(e))
                logger.warning("skipped %s: %s", entry.file, e)
                continue
            self.report.record_yield()
            yield entry, np.asarray(image.convert("RGB"), dtype=np.uint8)

"""MS-COCO captions: ``annotations/captions_{split}.json`` + the ``{split}/`` image folder."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from tessera.data.image_io import BadSampleError
from tessera.data.sources.base import Candidate, Source, check_dir
from tessera.errors import DataError

__all__ = ["CocoSource", "load_coco_captions"]


def load_coco_captions(annotation_file: str | os.PathLike[str]) -> list[tuple[int, str, list[str]]]:
    """Parse a COCO captions file into ``(image_id, file_name, captions)`` sorted by image id.

    Captions of one image are grouped in annotation-id order, stripped, blanks dropped.
    Raises :class:`DataError` if the file is missing or not COCO captions JSON.
    """
    path = Path(annotation_file).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"COCO annotation file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read COCO annotation file {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(f"{path} is not a COCO captions file (no 'images' list)")
    try:
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        anns = sorted(data.get("annotations", []), key=lambda a: int(a.get("id", 0)))
        grouped: dict[int, list[str]] = defaultdict(list)
        for ann in anns:
            caption = str(ann.get("caption", "")).strip()
            if caption:
                grouped[int(ann["image_id"])].append(caption)
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{path} is not a COCO captions file ({type(e).__name__}: {e})") from None
    return [(i, files[i], grouped.get(i, [])) for i in sorted(files)]


class CocoSource(Source):
    """MS-COCO images with their (typically 5) captions each; keys are COCO image ids.

    Either ``root`` with the standard layout (``root/annotations/captions_{split}.json`` and
    ``root/{split}/``), or explicit ``annotation_file`` and ``image_dir``. Images listed but
    missing on disk are skipped and counted (``image_missing``); images without captions
    as ``caption_missing``. Other keyword arguments: see :class:`Source`.
    """

    name = "coco"

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        split: str = "val2017",
        *,
        annotation_file: str | os.PathLike[str] | None = None,
        image_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if root is None and (annotation_file is None or image_dir is None):
            raise DataError("CocoSource needs root, or both annotation_file and image_dir")
        base = Path(root).expanduser() if root is not None else None
        if base is not None:
            check_dir(base, "COCO root")
        self.split = split
        self.annotation_file = Path(
            annotation_file
            if annotation_file is not None
            else base / "annotations" / f"captions_{split}.json"  # type: ignore[operator]
        )
        self.image_dir = check_dir(
            image_dir if image_dir is not None else base / split, "COCO image folder"
        )  # type: ignore[operator]
        self.records = load_coco_captions(self.annotation_file)
        if not self.records:
            raise DataError(f"no images listed in {self.annotation_file}")

    def describe(self) -> str:
        return f"{self.annotation_file}, images={self.image_dir}"

    def __len__(self) -> int:
        """Images listed in the annotation file (before skips and filters, all ranks)."""
        return len(self.records)

    def candidates(self) -> Iterator[Candidate]:
        for image_id, file_name, captions in self.records:
            yield Candidate(
                key=str(image_id),
                image=self.image_dir / file_name,
                captions=partial(_nonempty, tuple(captions), image_id),
            )


def _nonempty(captions: tuple[str, ...], image_id: int) -> tuple[str, ...]:
    if not captions:
        raise BadSampleError("caption_missing", f"COCO image {image_id} has no captions")
    return captions

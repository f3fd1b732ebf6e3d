"""A folder of image-caption pairs: ``x.jpg`` + ``x.txt`` (one caption per line), nested."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from tessera.data.sources.base import (
    IMAGE_SUFFIXES,
    Candidate,
    Source,
    check_dir,
    read_caption_file,
)
from tessera.errors import DataError

__all__ = ["FolderSource"]


class FolderSource(Source):
    """Image files under ``root`` (any depth) paired with a same-named ``.txt`` caption file.

    Order is deterministic: directories and files sorted by name. Keys are image paths
    relative to ``root`` (POSIX). Captions are one per line, strict UTF-8, stripped; blank
    lines dropped. An image whose ``.txt`` is missing, empty or not UTF-8 is skipped and
    counted (``caption_missing`` / ``caption_empty`` / ``caption_not_utf8``). Other keyword
    arguments: see :class:`~tessera.data.sources.base.Source`.
    """

    name = "folder"

    def __init__(self, root: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = check_dir(root, "image folder")

    def describe(self) -> str:
        return str(self.root)

    def image_paths(self) -> Iterator[Path]:
        """Image files under root, sorted (directories walked in name order)."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                    yield Path(dirpath) / name

    def candidates(self) -> Iterator[Candidate]:
        any_found = False
        for path in self.image_paths():
            any_found = True
            caption_path = path.with_suffix(".txt")
            yield Candidate(
                key=path.relative_to(self.root).as_posix(),
                image=path,
                captions=partial(read_caption_file, caption_path),
            )
        if not any_found:
            raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")

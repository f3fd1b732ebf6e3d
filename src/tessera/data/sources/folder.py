"""A folder of image-caption pairs: ``x.jpg`` + ``x.txt`` (one caption per line), nested."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from tessera.data.image_io import BadSampleError
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
    counted (``caption_missing`` / ``caption_empty`` / ``caption_not_utf8``). A directory
    below ``root`` that cannot be listed (permissions, removed while walking, ...) is counted
    once as ``unreadable_path`` under its path with a trailing ``/``: it holds an unknown
    number of examples. Other keyword arguments: see
    :class:`~tessera.data.sources.base.Source`.
    """

    name = "folder"

    def __init__(self, root: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = check_dir(root, "image folder")

    def describe(self) -> str:
        return str(self.root)

    def image_paths(self) -> Iterator[Path]:
        """Image files under root, sorted (directories walked in name order); directories
        that cannot be listed are left out (see :meth:`candidates`)."""
        for item in self._walk():
            if isinstance(item, Path):
                yield item

    def _walk(self) -> Iterator[Path | OSError]:
        """Image paths, and the errors of directories that could not be listed, in walk
        order. The root itself must be listable (else :class:`DataError`)."""
        errors: list[OSError] = []
        for dirpath, dirnames, filenames in os.walk(self.root, onerror=errors.append):
            yield from self._drain(errors)
            dirnames.sort()
            for name in sorted(filenames):
                if name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("."):
                    yield Path(dirpath) / name
        yield from self._drain(errors)

    def _drain(self, errors: list[OSError]) -> Iterator[OSError]:
        for e in errors:
            if e.filename is not None and Path(e.filename) == self.root:
                raise DataError(f"cannot list image folder {self.root}: {e.strerror or e}")
            yield e
        errors.clear()

    def candidates(self) -> Iterator[Candidate]:
        any_found = False
        max_bytes = self.config.max_caption_bytes
        for item in self._walk():
            any_found = True
            if isinstance(item, OSError):
                yield self._unlistable(item)
                continue
            yield Candidate(
                key=item.relative_to(self.root).as_posix(),
                image=item,
                captions=partial(read_caption_file, item.with_suffix(".txt"), max_bytes=max_bytes),
            )
        if not any_found:
            raise DataError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {self.root}")

    def _unlistable(self, e: OSError) -> Candidate:
        """A candidate that stands for a directory that could not be listed: it takes one slot
        of the rank/worker split, so exactly one process counts it."""
        path = Path(e.filename) if e.filename is not None else self.root
        try:
            key = path.relative_to(self.root).as_posix() + "/"
        except ValueError:
            key = f"{path}/"
        error = BadSampleError(
            "unreadable_path", f"cannot list directory {key}: {e.strerror or type(e).__name__}"
        )
        return Candidate(key=key, image=None, captions=tuple, error=error)

"""CUB-200-2011 birds with the widely used ``text_c10`` captions (10 per image)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from tessera.data.sources.base import Candidate, Source, check_dir, read_caption_file
from tessera.errors import DataError

__all__ = ["CubSource", "find_cub_dirs"]

SPLITS = ("train", "test", "all")


def find_cub_dirs(root: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(CUB_200_2011 dir, text_c10 dir)`` for a root laid out either as
    ``root/CUB_200_2011/{images.txt,images/}`` or as the ``CUB_200_2011`` folder itself, with
    ``text_c10/`` next to ``CUB_200_2011`` or inside it. A :class:`DataError` otherwise."""
    root = check_dir(root, "CUB root")
    if (root / "CUB_200_2011" / "images.txt").is_file():
        cub = root / "CUB_200_2011"
    elif (root / "images.txt").is_file():
        cub = root
    else:
        raise DataError(f"not a CUB-200-2011 folder: no CUB_200_2011/images.txt under {root}")
    looked = list(dict.fromkeys([root / "text_c10", cub / "text_c10", cub.parent / "text_c10"]))
    for text in looked:
        if text.is_dir():
            return cub, text
    where = ", ".join(str(p) for p in looked)
    raise DataError(f"CUB captions folder text_c10 not found (looked in: {where})")


def _read_table(path: Path) -> list[list[str]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise DataError(f"CUB file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read CUB file {path}: {e}") from None
    rows = [line.split() for line in lines if line.strip()]
    bad = next((i for i, r in enumerate(rows) if len(r) != 2), None)
    if bad is not None:
        raise DataError(f"{path}: line {bad + 1} is not '<id> <value>'")
    return rows


class CubSource(Source):
    """CUB-200-2011 images of ``split`` ("train", "test" or "all", from
    ``train_test_split.txt``) with captions from ``text_c10/<class>/<name>.txt``.

    Keys are image paths relative to ``images/`` without extension
    (``001.Black_footed_Albatross/Black_Footed_Albatross_0046_18``). Other keyword
    arguments: see :class:`Source`.
    """

    name = "cub"

    def __init__(self, root: str | os.PathLike[str], split: str = "test", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if split not in SPLITS:
            raise DataError(f"CUB split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.cub_dir, self.text_dir = find_cub_dirs(root)
        self.split = split
        images = _read_table(self.cub_dir / "images.txt")
        if split == "all":
            keep = {i for i, _ in images}
        else:
            flags = dict(_read_table(self.cub_dir / "train_test_split.txt"))
            want = "1" if split == "train" else "0"
            keep = {i for i, _ in images if flags.get(i) == want}
        try:
            self.images = sorted((int(i), rel) for i, rel in images if i in keep)
        except ValueError:
            raise DataError(f"{self.cub_dir / 'images.txt'}: image ids must be integers") from None
        if not self.images:
            raise DataError(f"no CUB images in split {split!r} under {self.cub_dir}")

    def describe(self) -> str:
        return f"{self.cub_dir}, split={self.split}"

    def __len__(self) -> int:
        """Images in the split (before skips and filters, all ranks)."""
        return len(self.images)

    def candidates(self) -> Iterator[Candidate]:
        for _, rel in self.images:
            stem = Path(rel).with_suffix("")
            yield Candidate(
                key=stem.as_posix(),
                image=self.cub_dir / "images" / rel,
                captions=partial(read_caption_file, self.text_dir / stem.with_suffix(".txt")),
            )

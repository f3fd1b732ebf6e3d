"""CUB-200-2011 birds with the widely used ``text_c10`` captions (10 per image).

Splits. Text-to-image work on CUB (GAN-INT-CLS, StackGAN, AttnGAN, DF-GAN, and the DALL·E
paper's CUB comparison) uses a *class-disjoint* split: 150 training classes (8855 images) and
50 test classes (2933 images), from Reed et al. 2016 (``testclasses.txt``; StackGAN ships it
as ``test/filenames.pickle``). That is ``split="train"`` / ``"test"`` here; the 50 test
class folder names ship as ``tessera/assets/cub_test_classes.txt`` (pass ``classes_file=`` to
use another list). CUB's own image-level ``train_test_split.txt`` (5994 / 5794 images, every
class in both) is ``split="cub_train"`` / ``"cub_test"``; ``"all"`` is every image.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Any

from tessera.data.image_io import BadSampleError, read_file_capped
from tessera.data.sources.base import Candidate, Source, check_dir, read_caption_file
from tessera.errors import DataError

__all__ = ["SPLITS", "CubSource", "default_test_classes", "find_cub_dirs", "read_class_list"]

logger = logging.getLogger("tessera.data")

SPLITS = ("train", "test", "all", "cub_train", "cub_test")
TEST_CLASSES_ASSET = "cub_test_classes.txt"


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


def _parse_class_list(text: str, where: str) -> frozenset[str]:
    names = [line.strip() for line in text.splitlines()]
    classes = frozenset(n for n in names if n and not n.startswith("#"))
    if not classes:
        raise DataError(f"no class names in {where}")
    bad = next((n for n in classes if "/" in n or n in (".", "..")), None)
    if bad is not None:
        raise DataError(f"{where}: {bad!r} is not a class folder name")
    return classes


def read_class_list(path: str | os.PathLike[str]) -> frozenset[str]:
    """Class folder names (``001.Black_footed_Albatross``), one per line; blank lines and
    ``#`` comments are ignored. A missing, unreadable or empty file raises :class:`DataError`."""
    try:
        data = read_file_capped(path, 1 << 20, missing="missing", unreadable="unreadable")
        return _parse_class_list(data.decode("utf-8-sig"), str(path))
    except BadSampleError as e:
        raise DataError(f"cannot read CUB class list: {e}") from None
    except UnicodeDecodeError:
        raise DataError(f"CUB class list {path} is not UTF-8") from None


def default_test_classes() -> frozenset[str]:
    """The 50 test classes of the standard class-disjoint split (the bundled asset)."""
    asset = resources.files("tessera") / "assets" / TEST_CLASSES_ASSET
    return _parse_class_list(asset.read_text(encoding="utf-8"), f"tessera/assets/{asset.name}")


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
    """CUB-200-2011 images of ``split`` with captions from ``text_c10/<class>/<name>.txt``.

    split: ``"train"`` / ``"test"``: the class-disjoint text-to-image split (see the module
      docstring): test = images of the test classes, train = all other images;
      ``"cub_train"`` / ``"cub_test"``: CUB's image-level ``train_test_split.txt``;
      ``"all"``: every image.
    classes_file: the test class folder names, one per line, for ``"train"`` / ``"test"``
      (default: the bundled list of the standard split). Listed classes absent from
      ``images.txt`` are logged as a warning; if none is present it is an error.

    Keys are image paths relative to ``images/`` without extension
    (``001.Black_footed_Albatross/Black_Footed_Albatross_0046_18``). Other keyword
    arguments: see :class:`Source`.
    """

    name = "cub"

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "test",
        *,
        classes_file: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if split not in SPLITS:
            raise DataError(f"CUB split must be one of {', '.join(SPLITS)}, got {split!r}")
        self.cub_dir, self.text_dir = find_cub_dirs(root)
        self.split = split
        self.classes_file = Path(classes_file) if classes_file is not None else None
        images = _read_table(self.cub_dir / "images.txt")
        if split == "all":
            keep = {i for i, _ in images}
        elif split in ("train", "test"):
            test = self._test_classes({rel.split("/", 1)[0] for _, rel in images})
            want_test = split == "test"
            keep = {i for i, rel in images if (rel.split("/", 1)[0] in test) == want_test}
        else:
            flags = dict(_read_table(self.cub_dir / "train_test_split.txt"))
            want = "1" if split == "cub_train" else "0"
            keep = {i for i, _ in images if flags.get(i) == want}
        try:
            self.images = sorted((int(i), rel) for i, rel in images if i in keep)
        except ValueError:
            raise DataError(f"{self.cub_dir / 'images.txt'}: image ids must be integers") from None
        if not self.images:
            raise DataError(f"no CUB images in split {split!r} under {self.cub_dir}")

    def _test_classes(self, present: set[str]) -> frozenset[str]:
        if self.classes_file is not None:
            test, where = read_class_list(self.classes_file), str(self.classes_file)
        else:
            test, where = default_test_classes(), "the standard split (bundled list)"
        found = test & present
        if not found:
            raise DataError(
                f"none of the {len(test)} test classes of {where} is a class folder in "
                f"{self.cub_dir / 'images.txt'} (pass classes_file= for another class list)"
            )
        if len(found) < len(test):
            missing = sorted(test - present)
            logger.warning(
                "CUB: %d of the %d test classes of %s are not in images.txt (first: %s)",
                len(missing),
                len(test),
                where,
                missing[0],
            )
        return found

    def describe(self) -> str:
        return f"{self.cub_dir}, split={self.split}"

    def __len__(self) -> int:
        """Images in the split (before skips and filters, all ranks)."""
        return len(self.images)

    def candidates(self) -> Iterator[Candidate]:
        max_bytes = self.config.max_caption_bytes
        for _, rel in self.images:
            stem = Path(rel).with_suffix("")
            yield Candidate(
                key=stem.as_posix(),
                image=self.cub_dir / "images" / rel,
                captions=partial(
                    read_caption_file,
                    self.text_dir / stem.with_suffix(".txt"),
                    max_bytes=max_bytes,
                ),
            )

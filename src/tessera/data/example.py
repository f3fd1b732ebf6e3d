"""The one interface every data source speaks: an iterable of :class:`Example`."""

from __future__ import annotations

import dataclasses

from PIL import Image


@dataclasses.dataclass(frozen=True, slots=True)
class Example:
    """One image with its captions.

    image: decoded RGB ``PIL.Image`` (mode ``"RGB"``, 8 bits per channel) — sources do all
      decoding and mode repair; transforms turn it into a float tensor in [0, 1].
    captions: one or more non-empty, stripped captions (sources skip examples with none).
    key: a stable identifier (relative path, shard/member name, COCO image id, ...).
    """

    image: Image.Image
    captions: tuple[str, ...]
    key: str

"""Image-caption data: one decoder, sources behind one interface, filters, transforms and
bad-sample accounting.

Every source is an iterable of :class:`Example` (RGB ``PIL.Image``, captions, key) and keeps
a :class:`DataReport`::

    from tessera.data import open_source, ImageTransform, ImageTextDataset, collate
    src = open_source("folder:/data/pairs", config=DataConfig(image_size=64))
    ds = ImageTextDataset(src, ImageTransform(64, train=True))
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=collate, num_workers=2)

Names are imported on first use, so ``import tessera.data`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tessera.data.example import Example
    from tessera.data.filters import (
        AspectRatioFilter,
        CaptionLengthFilter,
        PredicateFilter,
        apply_filters,
        aspect_ok,
        build_filters,
        caption_length_ok,
    )
    from tessera.data.image_io import (
        BadSampleError,
        ImageDecodeError,
        load_image,
        load_image_with_repairs,
    )
    from tessera.data.inspect import SourceStats, inspect_source, make_grid
    from tessera.data.report import DataReport
    from tessera.data.sources import (
        CocoSource,
        CubSource,
        FolderSource,
        ShapesAdapter,
        Source,
        WebDatasetSource,
        open_source,
    )
    from tessera.data.transforms import (
        ImageTextDataset,
        ImageTransform,
        center_crop,
        collate,
        random_crop,
        resize_shorter,
        to_tensor,
    )

__all__ = [
    "AspectRatioFilter",
    "BadSampleError",
    "CaptionLengthFilter",
    "CocoSource",
    "CubSource",
    "DataReport",
    "Example",
    "FolderSource",
    "ImageDecodeError",
    "ImageTextDataset",
    "ImageTransform",
    "PredicateFilter",
    "ShapesAdapter",
    "Source",
    "SourceStats",
    "WebDatasetSource",
    "apply_filters",
    "aspect_ok",
    "build_filters",
    "caption_length_ok",
    "center_crop",
    "collate",
    "inspect_source",
    "load_image",
    "load_image_with_repairs",
    "make_grid",
    "open_source",
    "random_crop",
    "resize_shorter",
    "to_tensor",
]

_MODULES: dict[str, tuple[str, ...]] = {
    "tessera.data.example": ("Example",),
    "tessera.data.filters": (
        "AspectRatioFilter",
        "CaptionLengthFilter",
        "PredicateFilter",
        "apply_filters",
        "aspect_ok",
        "build_filters",
        "caption_length_ok",
    ),
    "tessera.data.image_io": (
        "BadSampleError",
        "ImageDecodeError",
        "load_image",
        "load_image_with_repairs",
    ),
    "tessera.data.inspect": (
        "SourceStats",
        "inspect_source",
        "make_grid",
    ),
    "tessera.data.report": ("DataReport",),
    "tessera.data.sources": (
        "CocoSource",
        "CubSource",
        "FolderSource",
        "ShapesAdapter",
        "Source",
        "WebDatasetSource",
        "open_source",
    ),
    "tessera.data.transforms": (
        "ImageTextDataset",
        "ImageTransform",
        "center_crop",
        "collate",
        "random_crop",
        "resize_shorter",
        "to_tensor",
    ),
}
_EXPORTS = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'tessera.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

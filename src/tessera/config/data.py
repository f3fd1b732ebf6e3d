"""Config of data loading: decoding limits, paper-style filters, transforms, bad-sample policy."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from tessera.config.base import Config, register_preset
from tessera.errors import ConfigError

MiB = 1 << 20


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig(Config):
    """Decoding, filtering and transforms shared by every data source.

    image_size: side S of the square crop fed to models (pixels).
    image_formats: Pillow decoders tried (others are refused; limits the attack surface).
      Names are Pillow format names (``JPEG``, not ``JPG``), matched case-insensitively and
      stored upper-case; an unknown name is a :class:`ConfigError`.
    max_image_pixels: decompression-bomb cap (width * height); larger images are skipped.
    min_image_side: images whose shorter side is below this are skipped.
    max_image_bytes / max_caption_bytes: the most bytes read from one image / caption file
      (or tar member); larger ones are skipped as ``file_too_large`` without being read.
    min_aspect / max_aspect: width/height bounds (paper: [1/2, 2]); outside is filtered.
    min_caption_chars / max_caption_chars: caption length bounds after stripping; captions
      outside are dropped, and an example left with none is filtered.
    max_bad_fraction: abort once skipped/seen exceeds this (after ``bad_fraction_min_seen``).
    """

    kind: ClassVar[str] = "data"

    image_size: int = 64
    image_formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP")
    max_image_pixels: int = 89_478_485
    min_image_side: int = 8
    max_image_bytes: int = 256 * MiB
    max_caption_bytes: int = 1 * MiB
    min_aspect: float = 0.5
    max_aspect: float = 2.0
    min_caption_chars: int = 1
    max_caption_chars: int = 1024
    max_bad_fraction: float = 0.5
    bad_fraction_min_seen: int = 100

    def validate(self) -> None:
        if self.image_size < 8:
            raise ConfigError(f"data.image_size must be >= 8, got {self.image_size}")
        if not 0 < self.min_aspect <= 1 <= self.max_aspect:
            raise ConfigError("data: need 0 < min_aspect <= 1 <= max_aspect")
        if self.min_caption_chars < 0 or self.max_caption_chars < self.min_caption_chars:
            raise ConfigError("data: need 0 <= min_caption_chars <= max_caption_chars")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise ConfigError("data.max_bad_fraction must be in [0, 1]")
        if self.max_image_pixels < 1 or self.min_image_side < 1:
            raise ConfigError("data: max_image_pixels and min_image_side must be positive")
        if self.max_image_bytes < 1 or self.max_caption_bytes < 1:
            raise ConfigError("data: max_image_bytes and max_caption_bytes must be positive")
        object.__setattr__(self, "image_formats", _check_formats(self.image_formats))


def _check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    """Upper-cased Pillow format names; a one-line :class:`ConfigError` for an unknown one."""
    from PIL import Image

    if not formats:
        raise ConfigError("data.image_formats must name at least one Pillow format")
    Image.init()  # registers every plugin, so OPEN lists all formats this Pillow can decode
    known = Image.OPEN
    out = tuple(f.upper() for f in formats)
    for name, upper in zip(formats, out, strict=True):
        if upper not in known:
            alias = Image.EXTENSION.get(f".{name.lower()}")
            hint = f" (did you mean {alias!r}?)" if alias in known else ""
            raise ConfigError(
                f"data.image_formats: {name!r} is not a Pillow image format{hint}; "
                f"valid: {', '.join(sorted(known))}"
            )
    return out


@register_preset("data", "default")
def _data_default() -> DataConfig:
    return DataConfig()


@register_preset("data", "dalle")
def _data_dalle() -> DataConfig:
    return DataConfig(image_size=256)

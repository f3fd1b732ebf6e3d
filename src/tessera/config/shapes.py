"""Config of the built-in ``shapes`` data set (spec: shared/specs/shapes.md, v1)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from tessera.config.base import Config, register_preset
from tessera.errors import ConfigError

COLORS = ("red", "orange", "yellow", "green", "blue", "purple")
SHAPES = ("circle", "square", "triangle")
DEFAULT_HELD_OUT = ("green triangle", "blue circle", "purple square")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShapesConfig(Config):
    """How ``shapes`` examples are drawn.

    size: canvas side S in pixels, a multiple of 8 in [32, 512].
    n_captions: captions per image (MS-COCO style: 5).
    p_two_objects: probability of a two-object scene (spec: 0.5).
    held_out: "color shape" pairs never drawn in the train split (only in eval).
    supersample: anti-aliasing factor (draw at S*k, box-filter down).
    paraphrases: also draw non-canonical caption templates (canonical ones are always used).
    seed: base seed; the train and eval splits derive disjoint streams from it.
    """

    kind: ClassVar[str] = "shapes"

    size: int = 64
    n_captions: int = 5
    p_two_objects: float = 0.5
    held_out: tuple[str, ...] = DEFAULT_HELD_OUT
    supersample: int = 4
    paraphrases: bool = True
    seed: int = 0

    def validate(self) -> None:
        if self.size % 8 or not 32 <= self.size <= 512:
            raise ConfigError(f"shapes.size must be a multiple of 8 in [32, 512], got {self.size}")
        if self.n_captions < 1:
            raise ConfigError(f"shapes.n_captions must be >= 1, got {self.n_captions}")
        if not 0.0 <= self.p_two_objects <= 1.0:
            raise ConfigError(f"shapes.p_two_objects must be in [0, 1], got {self.p_two_objects}")
        if not 1 <= self.supersample <= 8:
            raise ConfigError(f"shapes.supersample must be in [1, 8], got {self.supersample}")
        for pair in self.held_out:
            parts = pair.split()
            if len(parts) != 2 or parts[0] not in COLORS or parts[1] not in SHAPES:
                raise ConfigError(
                    f"shapes.held_out: {pair!r} is not '<color> <shape>' "
                    f"(colors: {', '.join(COLORS)}; shapes: {', '.join(SHAPES)})"
                )


@register_preset("shapes", "default")
def _shapes_default() -> ShapesConfig:
    return ShapesConfig()


@register_preset("shapes", "tiny")
def _shapes_tiny() -> ShapesConfig:
    return ShapesConfig(size=32, n_captions=2)

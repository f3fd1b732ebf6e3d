"""Normative constants of the ``shapes`` data set (spec: shared/specs/shapes.md, v1).

Everything here is fixed by the spec; the renderer, the caption templates and the checker all
read these tables, so the three agree by construction.
"""

from __future__ import annotations

import numpy as np

from tessera.config.shapes import COLORS, SHAPES

__all__ = [
    "CELLS",
    "CELL_INDEX",
    "COLORS",
    "PALETTE",
    "PALETTE_ARRAY",
    "RELATIONS",
    "RELATION_PHRASES",
    "SHAPES",
    "SIZES",
    "SIZE_FRACTION",
    "WHERE_PHRASES",
    "WHITE",
    "box_side",
    "cell_of",
    "inverse_relation",
]

# name -> sRGB, exactly as in the spec's palette table.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "orange": (245, 140, 20),
    "yellow": (235, 200, 20),
    "green": (30, 160, 70),
    "blue": (30, 90, 220),
    "purple": (140, 50, 190),
}
assert tuple(PALETTE) == COLORS  # one source of truth for the order of colours

# (6, 3) uint8, rows in COLORS order.
PALETTE_ARRAY: np.ndarray = np.array([PALETTE[c] for c in COLORS], dtype=np.uint8)
PALETTE_ARRAY.setflags(write=False)

WHITE: tuple[int, int, int] = (255, 255, 255)

SIZES: tuple[str, ...] = ("small", "large")
# Box side as a fraction of the canvas side S: s = round(fraction * S).
SIZE_FRACTION: dict[str, float] = {"small": 0.24, "large": 0.40}

# The nine cells of the 3x3 grid in raster order, as (name, column, row), column/row in 0..2.
CELLS: tuple[str, ...] = (
    "top-left",
    "top",
    "top-right",
    "left",
    "center",
    "right",
    "bottom-left",
    "bottom",
    "bottom-right",
)
# cell name -> (column, row); column 0 is the left, row 0 the top.
CELL_INDEX: dict[str, tuple[int, int]] = {name: (i % 3, i // 3) for i, name in enumerate(CELLS)}

# cell name -> the spec's {where} phrase.
WHERE_PHRASES: dict[str, str] = {
    "top-left": "in the top left corner",
    "top": "at the top",
    "top-right": "in the top right corner",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom-left": "in the bottom left corner",
    "bottom": "at the bottom",
    "bottom-right": "in the bottom right corner",
}

# Relations, said of the first object relative to the second, and their {relation} phrases.
RELATIONS: tuple[str, ...] = ("left of", "right of", "above", "below")
RELATION_PHRASES: dict[str, str] = {
    "left of": "to the left of",
    "right of": "to the right of",
    "above": "above",
    "below": "below",
}
_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def inverse_relation(relation: str) -> str:
    """The relation of the second object to the first (``"left of"`` -> ``"right of"``)."""
    return _INVERSE[relation]


def box_side(size: str, canvas: int) -> int:
    """Side ``s`` in pixels of the square bounding box of a ``size`` object on an S-pixel canvas.

    ``round(0.24 * S)`` for small, ``round(0.40 * S)`` for large. For S a multiple of 8 the
    product is never a tie at .5, so Python's round-half-even does not matter.
    """
    return round(SIZE_FRACTION[size] * canvas)


def cell_of(x: float, y: float, canvas: int | float) -> str:
    """Name of the 3x3-grid cell holding point (x, y) (pixels, origin top-left, y down)."""
    col = min(2, max(0, int(3.0 * x / canvas)))
    row = min(2, max(0, int(3.0 * y / canvas)))
    return CELLS[3 * row + col]

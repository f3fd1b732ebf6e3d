"""Rasterise a :class:`Scene`: white canvas, flat palette colours, supersampled edges.

Each object is drawn inside its square box on a ``k``-times finer grid (``k`` = supersample),
then box-filtered down, so a pixel's coverage is the share of its k*k subpixel centres inside
the shape: interiors get coverage 1 and hence exactly the palette colour. The box's corner is
snapped to that subpixel grid (a shift of at most 1/(2k) pixel), so an object's coverage
depends only on (shape, side, k, subpixel offset): those few masks are computed once and cached
as subpixel counts, and rendering an image is a white-canvas copy plus, per object, one lookup
of the counts in a per-colour table of the k*k + 1 blends and one slice assignment.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from tessera.data.shapes.palette import PALETTE, box_side
from tessera.data.shapes.scene import Scene

__all__ = ["coverage_mask", "object_patch", "render_scene"]


@functools.lru_cache(maxsize=4096)
def coverage_counts(shape: str, side: int, supersample: int, ox: int, oy: int) -> np.ndarray:
    """Covered subpixels per pixel (0 .. k*k) of a ``shape`` whose box has ``side`` pixels and
    whose top-left corner sits ``(ox, oy)`` subpixels (each in [0, k)) right/down of a pixel
    corner, ``k = supersample``.

    Returns a read-only uint8 array (h, w) over the pixels the box touches:
    ``h = ceil((oy + side * k) / k)``, ``w`` likewise. Cached: one byte per pixel.
    """
    k = supersample
    w = -(-(ox + side * k) // k)
    h = -(-(oy + side * k) // k)
    # Box-local coordinates (pixels) of the subpixel centres: (w*k,), (h*k,).
    u = (np.arange(w * k) - ox + 0.5) / k
    v = (np.arange(h * k) - oy + 0.5) / k
    x, y = u[None, :], v[:, None]  # (1, w*k), (h*k, 1)
    in_box = (x >= 0) & (x <= side) & (y >= 0) & (y <= side)  # (h*k, w*k)
    half = side / 2.0
    if shape == "square":
        inside = in_box
    elif shape == "circle":  # disc inscribed in the box
        inside = (x - half) ** 2 + (y - half) ** 2 <= half**2
    elif shape == "triangle":  # apex at (s/2, 0), base along y = s: half-width at depth v is v/2
        inside = in_box & (2.0 * np.abs(x - half) <= y)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    # Box filter: count per k x k block of subpixels -> (h, w).
    counts = inside.reshape(h, k, w, k).sum(axis=(1, 3), dtype=np.int64).astype(np.uint8)
    counts.setflags(write=False)
    return counts


def coverage_mask(shape: str, side: int, supersample: int, ox: int, oy: int) -> np.ndarray:
    """Coverage in [0, 1] per pixel, float64 (h, w): :func:`coverage_counts` / k^2."""
    return coverage_counts(shape, side, supersample, ox, oy) / float(supersample * supersample)


@functools.lru_cache(maxsize=64)
def _blend_table(color: str, supersample: int) -> np.ndarray:
    """uint8 (k*k + 1, 3): the pixel over white of each subpixel count,
    round(255 + count / k^2 * (colour - 255)) per channel."""
    levels = np.arange(supersample * supersample + 1) / float(supersample * supersample)
    c = np.asarray(PALETTE[color], dtype=np.float64)
    table = np.rint(255.0 + levels[:, None] * (c - 255.0)).astype(np.uint8)
    table.setflags(write=False)
    return table


def object_patch(
    shape: str, side: int, supersample: int, ox: int, oy: int, color: str
) -> np.ndarray:
    """The object's pixels over a white background: uint8 (h, w, 3), see
    :func:`coverage_counts`. Pixel = round(255 + coverage * (colour - 255)) per channel, so
    fully covered pixels are exactly the palette colour."""
    counts = coverage_counts(shape, side, supersample, ox, oy)
    return _blend_table(color, supersample)[counts]  # table lookup: (h, w) -> (h, w, 3)


def _snap(centre: float, side: int, canvas: int, k: int) -> tuple[int, int]:
    """Box's first pixel and subpixel offset: the corner ``centre - side/2`` rounded to the
    nearest 1/k pixel and kept inside the canvas."""
    corner = math.floor((centre - side / 2.0) * k + 0.5)
    corner = min(max(corner, 0), (canvas - side) * k)
    return divmod(corner, k)


def render_scene(scene: Scene, size: int | None = None, *, supersample: int = 4) -> np.ndarray:
    """Pixels of ``scene``: uint8 array (S, S, 3), RGB, white background.

    size: canvas side S in pixels (default ``scene.canvas``); another size rescales the
      geometry (centres scale by ``S / scene.canvas``, sides are recomputed from the size
      class, as the spec defines them).
    supersample: anti-aliasing factor k in [1, 8] (the config's ``supersample``).
    """
    size = scene.canvas if size is None else int(size)
    k = int(supersample)
    scale = size / scene.canvas
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    drawn: list[tuple[int, int, int, int]] = []  # (y0, y1, x0, x1) of patches already placed
    for obj in scene.objects:
        side = obj.side if size == scene.canvas else box_side(obj.size, size)
        x0, ox = _snap(obj.cx * scale, side, size, k)
        y0, oy = _snap(obj.cy * scale, side, size, k)
        patch = object_patch(obj.shape, side, k, ox, oy, obj.color)
        h, w = patch.shape[:2]
        y1, x1 = y0 + h, x0 + w
        if not any(a < y1 and y0 < b and c < x1 and x0 < d for a, b, c, d in drawn):
            # Fast path (every spec scene): the patch lands on white, where it is exact.
            canvas[y0:y1, x0:x1] = patch
        else:
            # Overlap: composite "over" with the coverage as alpha.
            cov = coverage_mask(obj.shape, side, k, ox, oy)[..., None]
            color = np.asarray(PALETTE[obj.color], dtype=np.float64)
            region = canvas[y0:y1, x0:x1].astype(np.float64)
            canvas[y0:y1, x0:x1] = np.rint(region * (1.0 - cov) + color * cov).astype(np.uint8)
        drawn.append((y0, y1, x0, x1))
    return canvas

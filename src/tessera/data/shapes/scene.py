"""Deterministic scene sampling: ``(config.seed, split, index) -> Scene``.

A scene is the complete, resolution-free description of one example (objects, their boxes,
the relation); pixels and captions are pure functions of it. Every random draw comes from a
fresh ``numpy.random.Generator`` (PCG64) seeded with ``[seed, tag, split, index]``: PCG64 and
``SeedSequence`` are specified bit-exactly by NumPy, so an example is the same on every
machine, and no global RNG is touched.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from tessera.config.shapes import ShapesConfig
from tessera.data.shapes.palette import (
    CELL_INDEX,
    CELLS,
    COLORS,
    RELATIONS,
    SHAPES,
    SIZES,
    box_side,
    cell_of,
)
from tessera.errors import ConfigError

__all__ = [
    "PAIRS",
    "SPLITS",
    "Scene",
    "SceneObject",
    "allowed_pairs",
    "example_rng",
    "sample_scene",
    "uniforms",
]

SPLITS: tuple[str, ...] = ("train", "eval")
# Split -> stream number mixed into the seed: the two splits never share a generator state.
_SPLIT_CODE = {"train": 0, "eval": 1}
# Constant mixed into every seed so these streams differ from other users of the same seed.
_STREAM_TAG = 0x5348_4150  # "SHAP"
# All colour-shape pairs in a fixed order, e.g. ("red", "circle").
PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLORS for s in SHAPES)


@dataclasses.dataclass(frozen=True, slots=True)
class SceneObject:
    """One filled object.

    color / shape / size: names from the palette tables (``size`` is ``small`` or ``large``).
    cx, cy: centre of the square bounding box in pixels of the scene's canvas (origin at the
      top-left corner of the canvas, x to the right, y down; a pixel ``j`` spans [j, j+1)).
    side: side ``s`` of the bounding box in pixels.
    cell: the 3x3-grid cell holding the box centre (for one-object scenes, the drawn cell).
    """

    color: str
    shape: str
    size: str
    cx: float
    cy: float
    side: int
    cell: str

    @property
    def pair(self) -> str:
        """``"<color> <shape>"``, the form used by ``ShapesConfig.held_out``."""
        return f"{self.color} {self.shape}"


@dataclasses.dataclass(frozen=True, slots=True)
class Scene:
    """One example's content.

    canvas: side S in pixels the geometry refers to.
    objects: one object, or two (both small) for a relation scene.
    relation: for two objects, ``objects[0]`` is ``relation`` ``objects[1]``
      (one of ``RELATIONS``: "left of", "right of", "above", "below"); ``None`` otherwise.
    split / index: where the scene comes from (for keys and metadata).
    """

    canvas: int
    objects: tuple[SceneObject, ...]
    relation: str | None
    split: str
    index: int

    def to_dict(self) -> dict:
        """JSON-ready metadata (used by the webdataset export)."""
        return {
            "canvas": self.canvas,
            "split": self.split,
            "index": self.index,
            "relation": self.relation,
            "objects": [dataclasses.asdict(o) for o in self.objects],
        }


def _check_split(split: str) -> int:
    try:
        return _SPLIT_CODE[split]
    except KeyError:
        raise ConfigError(
            f"unknown shapes split {split!r}; choose from: {', '.join(SPLITS)}"
        ) from None


def example_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of example ``index`` of ``split``; ``stream`` separates scenes (0) from
    captions (1) so that changing caption settings never moves a scene."""
    if index < 0:
        raise ConfigError(f"shapes example index must be >= 0, got {index}")
    code = _check_split(split)
    # SeedSequence needs non-negative entropy; fold negative seeds into uint64 deterministically.
    return np.random.default_rng([seed % (1 << 64), _STREAM_TAG, code, index, stream])


def uniforms(rng: np.random.Generator, n: int) -> list[float]:
    """``n`` uniforms in [0, 1) from the generator's raw PCG64 output, 53 bits each.

    Same conversion as ``Generator.random``, but done here so the values are fixed by the
    bit generator alone (which NumPy keeps stable), not by a ``Generator`` method.
    """
    raw = rng.bit_generator.random_raw(n)  # (n,) uint64
    return ((raw >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)).tolist()


@functools.lru_cache(maxsize=64)
def allowed_pairs(split: str, held_out: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """Colour-shape pairs a split may draw: ``train`` excludes ``held_out``, ``eval`` has all."""
    _check_split(split)
    if split == "eval":
        return PAIRS
    banned = {tuple(p.split()) for p in held_out}
    pairs = tuple(p for p in PAIRS if p not in banned)
    if not pairs:
        raise ConfigError("shapes.held_out removes every colour-shape pair from the train split")
    return pairs


def _place(centre: float, jitter_u: float, side: int, canvas: int) -> float:
    """Centre + uniform jitter in [-S/32, S/32] (from ``jitter_u`` in [0, 1)), clamped so the
    box [c - s/2, c + s/2] stays inside [0, S]."""
    c = centre + (2.0 * jitter_u - 1.0) * (canvas / 32.0)
    return min(max(c, side / 2.0), canvas - side / 2.0)


def sample_scene(config: ShapesConfig, split: str, index: int) -> Scene:
    """The scene of example ``index`` (>= 0) of ``split`` (``"train"`` or ``"eval"``).

    Pure: depends only on (config.seed, config.size, config.p_two_objects, config.held_out,
    split, index). ``train`` never holds a ``held_out`` pair; ``eval`` draws all 18 pairs
    uniformly, so about 1/6 of its objects are held-out pairs (with the default list).
    """
    S = config.size
    pairs = allowed_pairs(split, config.held_out)
    # Eight uniforms in [0, 1) cover every draw of either scene kind; one call keeps it fast.
    u = uniforms(example_rng(config.seed, split, index), 8)
    if u[0] >= config.p_two_objects:
        color, shape = pairs[int(u[1] * len(pairs))]
        size = SIZES[int(u[2] * len(SIZES))]
        cell = CELLS[int(u[3] * len(CELLS))]
        col, row = CELL_INDEX[cell]
        s = box_side(size, S)
        # Cell centres are S/6, S/2, 5S/6 on each axis.
        cx = _place((2 * col + 1) * S / 6.0, u[4], s, S)
        cy = _place((2 * row + 1) * S / 6.0, u[5], s, S)
        obj = SceneObject(color=color, shape=shape, size=size, cx=cx, cy=cy, side=s, cell=cell)
        return Scene(canvas=S, objects=(obj,), relation=None, split=split, index=index)

    if len(pairs) < 2:
        raise ConfigError("shapes: two-object scenes need at least two allowed colour-shape pairs")
    i1 = int(u[1] * len(pairs))
    # The second pair is drawn from the others, so the two differ in colour, shape or both.
    i2 = int(u[2] * (len(pairs) - 1))
    i2 += i2 >= i1
    relation = RELATIONS[int(u[3] * len(RELATIONS))]
    s = box_side("small", S)
    if relation in ("left of", "right of"):
        first, second = (S / 4.0, S / 2.0), (3 * S / 4.0, S / 2.0)
        if relation == "right of":
            first, second = second, first
    else:
        first, second = (S / 2.0, S / 4.0), (S / 2.0, 3 * S / 4.0)
        if relation == "below":
            first, second = second, first
    objects = []
    for (color, shape), (x, y), (ux, uy) in zip(
        (pairs[i1], pairs[i2]), (first, second), ((u[4], u[5]), (u[6], u[7]))
    ):
        cx, cy = _place(x, ux, s, S), _place(y, uy, s, S)
        objects.append(
            SceneObject(
                color=color,
                shape=shape,
                size="small",
                cx=cx,
                cy=cy,
                side=s,
                cell=cell_of(cx, cy, S),
            )
        )
    return Scene(canvas=S, objects=tuple(objects), relation=relation, split=split, index=index)

"""Check whether an image matches a canonical ``shapes`` prompt (spec: "Checking an image").

Pure functions, vectorised with NumPy; one image of side 64 takes well under a millisecond.
The pipeline, exactly as the spec states it:

1. coverage: each pixel p is assigned the palette colour c whose white-to-colour segment
   ``W + alpha_c (c - W)`` is nearest, ``alpha_c = <W-p, W-c> / |W-c|^2`` clipped to [0, 1];
   its coverage ``a`` is that alpha.
2. objects: 4-connected components of one colour with ``a >= 0.5`` and >= 1% of the canvas;
   each grows by one pixel (8-neighbourhood) into pixels of the same colour, weighted by ``a``,
   giving soft area, width (sum over columns of the column max), height, fill and centroid.
3. claims: count, colour+shape, size, where, relation, each with the spec's thresholds.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from typing import Any

import numpy as np
from scipy import ndimage

from tessera.data.shapes.palette import (
    COLORS,
    PALETTE_ARRAY,
    RELATION_PHRASES,
    SHAPES,
    SIZES,
    WHERE_PHRASES,
    cell_of,
)
from tessera.errors import DataError

__all__ = [
    "CheckResult",
    "Claims",
    "DetectedObject",
    "ObjectClaim",
    "check_image",
    "classify_shape",
    "detect_objects",
    "parse_prompt",
    "pixel_coverage",
]

# -- thresholds of the spec ---------------------------------------------------------------------
MIN_OBJECT_FRACTION = 0.01  # a component must cover >= 1% of the canvas
MIN_COVERAGE = 0.5  # pixels with a >= 0.5 form components
ASPECT_RANGE = (0.67, 1.5)  # soft width / height
TRIANGLE_TAPER = 1.5  # bottom-third mean row width >= 1.5x the top third
TRIANGLE_FILL = (0.35, 0.75)  # [lo, hi)
SQUARE_FILL = 0.86
CIRCLE_FILL = 0.62
SMALL_MAX = 0.32  # small if max(w, h) < 0.32 S
RELATION_MARGIN = 1.0 / 8.0  # centres differ by >= S/8 along the relation's axis

_WHITE = np.float32(255.0)
# (6, 3) W - c per palette colour, and |W - c|^2 (6,), float32.
_V = (255.0 - PALETTE_ARRAY.astype(np.float32)).astype(np.float32)
_VV = (_V * _V).sum(axis=1)
_INV_VV = (1.0 / _VV).astype(np.float32)
_CROSS = ndimage.generate_binary_structure(2, 1)  # 4-connectivity for components
_BOX = np.ones((3, 3), dtype=bool)  # growth by one pixel in every direction


# -- prompts ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class ObjectClaim:
    """One named object: colour and shape always; size ("small"/"large") and where (a cell name
    of ``CELLS``, e.g. "top-left") only when the prompt names them."""

    color: str
    shape: str
    size: str | None = None
    where: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Claims:
    """What a canonical prompt asserts: one or two objects, and for two a relation
    ("left of", "right of", "above", "below") of the first to the second."""

    objects: tuple[ObjectClaim, ...]
    relation: str | None = None


_ART = r"(?:a|an)"
_COLOR = "(" + "|".join(COLORS) + ")"
_SHAPE = "(" + "|".join(SHAPES) + ")"
_SIZE = "(" + "|".join(SIZES) + ")"
_WHERE_BY_PHRASE = {phrase: cell for cell, phrase in WHERE_PHRASES.items()}
_REL_BY_PHRASE = {phrase: rel for rel, phrase in RELATION_PHRASES.items()}
_WHERE = "(" + "|".join(map(re.escape, _WHERE_BY_PHRASE)) + ")"
_REL = "(" + "|".join(map(re.escape, _REL_BY_PHRASE)) + ")"
_ONE_RE = re.compile(rf"{_ART} (?:{_SIZE} )?{_COLOR} {_SHAPE}(?: {_WHERE})?")
_TWO_RE = re.compile(rf"{_ART} {_COLOR} {_SHAPE} {_REL} {_ART} {_COLOR} {_SHAPE}")


def parse_prompt(prompt: str) -> Claims:
    """Parse a prompt in one of the spec's canonical forms (``a``/``an`` both accepted).

    Forms: ``a {color} {shape}``, ``a {size} {color} {shape}``, ``a {color} {shape} {where}``,
    ``a {size} {color} {shape} {where}``, ``a {color} {shape} {relation} a {color} {shape}``.
    Case, repeated spaces and one trailing period are forgiven. Anything else raises
    :class:`~tessera.errors.DataError`.
    """
    text = " ".join(str(prompt).lower().split())
    text = text.removesuffix(".").rstrip()
    if m := _ONE_RE.fullmatch(text):
        size, color, shape, where = m.groups()
        where_cell = _WHERE_BY_PHRASE[where] if where else None
        return Claims(objects=(ObjectClaim(color, shape, size, where_cell),))
    if m := _TWO_RE.fullmatch(text):
        c1, s1, rel, c2, s2 = m.groups()
        return Claims(
            objects=(ObjectClaim(c1, s1), ObjectClaim(c2, s2)), relation=_REL_BY_PHRASE[rel]
        )
    raise DataError(
        f"prompt {prompt!r} is not in a canonical shapes form "
        "(e.g. 'a small red circle in the top left corner', "
        "'a red circle to the left of a blue square')"
    )


# -- pixels -----------------------------------------------------------------------------------
def _as_rgb_float(image: Any) -> np.ndarray:
    """(H, W, 3) float32 in [0, 255] from uint8/float numpy (H, W, 3), PIL, or a torch tensor
    (3, H, W) (float in [0, 1] or uint8)."""
    if type(image).__module__.split(".")[0] == "torch":
        t = image.detach().cpu()
        if t.ndim == 4 and t.shape[0] == 1:
            t = t[0]
        if t.ndim != 3 or t.shape[0] != 3:
            raise DataError(f"check_image: expected a (3, H, W) tensor, got {tuple(t.shape)}")
        if t.is_floating_point():
            arr = t.float().clamp(0.0, 1.0).permute(1, 2, 0).numpy() * np.float32(255.0)
        else:
            arr = t.permute(1, 2, 0).numpy()
    elif hasattr(image, "convert") and hasattr(image, "size"):  # PIL.Image
        arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
        if arr.ndim != 3 or arr.shape[2] != 3:
            raise DataError(f"check_image: expected an (H, W, 3) RGB array, got {arr.shape}")
        if arr.dtype.kind == "f":
            arr = np.clip(arr, 0.0, 1.0) * np.float32(255.0)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.shape[0] != arr.shape[1]:
        raise DataError(f"check_image: expected a square image, got {arr.shape[1]}x{arr.shape[0]}")
    return arr


def pixel_coverage(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Nearest palette colour and its coverage per pixel.

    image: float (H, W, 3) in [0, 255].
    Returns (colour index into ``COLORS`` as int (H, W), coverage ``a`` float32 (H, W) in
    [0, 1]). Pure white gets coverage 0 (its colour index is then meaningless).
    """
    H, W, _ = image.shape
    # Channel planes (3, N) of W - p: NumPy reduces long rows fast and length-3 rows slowly,
    # so everything below works on (channels or colours, pixels) arrays.
    D = _WHITE - image.reshape(-1, 3).T.astype(np.float32)  # (3, N)
    # Pure white pixels have every alpha 0; only the others need the (6, M) algebra, which
    # keeps the working set small (a generated or rendered image is mostly background).
    sel = np.flatnonzero(np.maximum(np.maximum(D[0], D[1]), D[2]) > 0)  # (M,)
    Ds = D[:, sel]  # (3, M)
    dots = _V @ Ds  # (6, M) <W - p, W - c>
    alpha = dots * _INV_VV[:, None]
    np.clip(alpha, 0.0, 1.0, out=alpha)
    # |D - alpha V|^2 = |D|^2 - 2 alpha <D, V> + alpha^2 |V|^2; |D|^2 is the same for all c.
    score = alpha * _VV[:, None]
    score -= 2.0 * dots
    score *= alpha
    # argmin over the 6 colours, first colour wins ties (as np.argmin would).
    best = np.zeros(len(sel), dtype=np.intp)
    low = score[0].copy()
    for c in range(1, len(_VV)):
        better = score[c] < low
        best[better] = c
        np.minimum(low, score[c], out=low)
    idx = np.zeros(H * W, dtype=np.intp)
    a = np.zeros(H * W, dtype=np.float32)
    idx[sel] = best
    a[sel] = alpha[best, np.arange(len(sel))]
    return idx.reshape(H, W), a.reshape(H, W)


# -- objects ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class DetectedObject:
    """One object found in an image (all lengths in pixels, origin top-left, y down).

    color: palette name; shape: "circle"/"square"/"triangle" or None (no rule matched).
    width / height: soft extents; area: soft area (sum of coverage); fill: area / (w * h).
    cx, cy: coverage-weighted centroid (pixel j spans [j, j+1)); pixels: size of the core
    component (pixels with a >= 0.5); size: "small"/"large"; cell: 3x3-grid cell of the centre.
    """

    color: str
    shape: str | None
    width: float
    height: float
    area: float
    fill: float
    cx: float
    cy: float
    pixels: int
    size: str
    cell: str


def classify_shape(
    width: float, height: float, fill: float, top: float, bottom: float
) -> str | None:
    """The spec's shape rule from soft width/height (pixels), fill in [0, 1] and the mean soft
    row widths of the top and bottom thirds (pixels). Returns a shape name or None."""
    if height <= 0 or not ASPECT_RANGE[0] <= width / height <= ASPECT_RANGE[1]:
        return None
    if bottom >= TRIANGLE_TAPER * top and TRIANGLE_FILL[0] <= fill < TRIANGLE_FILL[1]:
        return "triangle"
    if fill >= SQUARE_FILL:
        return "square"
    if fill >= CIRCLE_FILL:
        return "circle"
    return None


def detect_objects(image: Any) -> tuple[DetectedObject, ...]:
    """All objects of an image, largest first (image types as for :func:`check_image`)."""
    return _detect(_as_rgb_float(image))


def _detect(rgb: np.ndarray) -> tuple[DetectedObject, ...]:
    """:func:`detect_objects` on float (S, S, 3) in [0, 255]."""
    S = rgb.shape[0]
    idx, a = pixel_coverage(rgb)  # (S, S) colour index, coverage
    min_pixels = MIN_OBJECT_FRACTION * S * S
    core_at = np.flatnonzero(a.ravel() >= MIN_COVERAGE)  # flat indices, ascending
    core_color = idx.ravel()[core_at]
    # Only colours with enough core pixels can hold an object; each is labelled inside the
    # bounding box of its core pixels (padded by the one pixel objects grow), not the canvas.
    counts = np.bincount(core_color, minlength=len(COLORS))
    found: list[DetectedObject] = []
    for ci in np.flatnonzero(counts >= min_pixels):
        rows, cols = np.divmod(core_at[core_color == ci], S)
        wy0, wy1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, S)
        wx0, wx1 = max(int(cols.min()) - 1, 0), min(int(cols.max()) + 2, S)
        same = idx[wy0:wy1, wx0:wx1] == ci  # (h, w) pixels of this colour
        a_win = a[wy0:wy1, wx0:wx1]
        labels, n = ndimage.label(same & (a_win >= MIN_COVERAGE), structure=_CROSS)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        for lab, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None or sizes[lab] < min_pixels:
                continue
            # Object window = the component's box padded by the one pixel it may grow.
            y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, wy1 - wy0)
            x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, wx1 - wx0)
            comp = labels[y0:y1, x0:x1] == lab
            grown = ndimage.binary_dilation(comp, structure=_BOX) & same[y0:y1, x0:x1]
            weight = np.where(grown, a_win[y0:y1, x0:x1], np.float32(0.0))
            found.append(_measure(weight, wx0 + x0, wy0 + y0, COLORS[ci], S, int(sizes[lab])))
    found.sort(key=lambda o: -o.area)
    return tuple(found)


def _measure(
    weight: np.ndarray, x0: int, y0: int, color: str, S: int, pixels: int
) -> DetectedObject:
    """Soft statistics of one object from its coverage-weighted region ``weight`` (h, w),
    whose top-left pixel is (x0, y0) in the image."""
    col_max = weight.max(axis=0)  # (w,)
    row_max = weight.max(axis=1)  # (h,)
    width, height = float(col_max.sum()), float(row_max.sum())
    area = float(weight.sum())
    fill = area / (width * height)
    cx = x0 + float((weight.sum(axis=0) * (np.arange(weight.shape[1]) + 0.5)).sum()) / area
    cy = y0 + float((weight.sum(axis=1) * (np.arange(weight.shape[0]) + 0.5)).sum()) / area
    # Mean soft row width of the top and bottom thirds of the region's rows.
    row_w = weight.sum(axis=1)[row_max > 0]
    third = max(1, len(row_w) // 3)
    top, bottom = float(row_w[:third].mean()), float(row_w[-third:].mean())
    return DetectedObject(
        color=color,
        shape=classify_shape(width, height, fill, top, bottom),
        width=width,
        height=height,
        area=area,
        fill=fill,
        cx=cx,
        cy=cy,
        pixels=pixels,
        size="small" if max(width, height) < SMALL_MAX * S else "large",
        cell=cell_of(cx, cy, S),
    )


# -- claims -----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, slots=True)
class CheckResult:
    """Outcome of :func:`check_image`.

    passed: every claim the prompt makes holds (the "strict" score).
    count, color_shape: always claimed. size, position, relation: None when not claimed.
    objects: the detected objects (for debugging); matched: for each named object, the index
    into ``objects`` it was matched to (same colour, preferring the same shape) or None.
    """

    passed: bool
    count: bool
    color_shape: bool
    size: bool | None
    position: bool | None
    relation: bool | None
    objects: tuple[DetectedObject, ...]
    matched: tuple[int | None, ...]
    claims: Claims

    def claim_results(self) -> dict[str, bool | None]:
        """Claim name -> held (None when not claimed), for per-claim shares."""
        return {
            "count": self.count,
            "color_shape": self.color_shape,
            "size": self.size,
            "position": self.position,
            "relation": self.relation,
        }


def _match(
    named: tuple[ObjectClaim, ...], found: tuple[DetectedObject, ...]
) -> tuple[int | None, ...]:
    """Injective assignment of named objects to detected ones of the same colour, maximising
    the number of shape agreements, then the matched area. Unmatchable names get None."""
    options = [[i for i, o in enumerate(found) if o.color == n.color] + [None] for n in named]
    best: tuple[int | None, ...] = tuple(None for _ in named)
    best_key = (-1, -1, -1.0)
    for combo in itertools.product(*options):
        chosen = [i for i in combo if i is not None]
        if len(chosen) != len(set(chosen)):
            continue
        key = (
            sum(found[i].shape == n.shape for n, i in zip(named, combo) if i is not None),
            len(chosen),
            sum(found[i].area for i in chosen),
        )
        if key > best_key:
            best, best_key = combo, key
    return best


def _relation_holds(first: DetectedObject, second: DetectedObject, relation: str, S: int) -> bool:
    m = RELATION_MARGIN * S
    if relation == "left of":
        return first.cx <= second.cx - m
    if relation == "right of":
        return first.cx >= second.cx + m
    if relation == "above":
        return first.cy <= second.cy - m
    return first.cy >= second.cy + m  # below


def check_image(image: Any, prompt: str | Claims) -> CheckResult:
    """Check an image against a canonical prompt with the spec's rules.

    image: uint8 (S, S, 3) RGB array (float arrays are read as [0, 1]), a PIL image, or a
      torch tensor (3, S, S) or (1, 3, S, S), float in [0, 1] or uint8.
    prompt: a canonical-form prompt (see :func:`parse_prompt`) or already parsed ``Claims``.
    Raises :class:`~tessera.errors.DataError` for a non-canonical prompt or a bad image.
    """
    claims = prompt if isinstance(prompt, Claims) else parse_prompt(prompt)
    rgb = _as_rgb_float(image)
    S = rgb.shape[0]
    found = _detect(rgb)
    named = claims.objects
    matched = _match(named, found)
    hits = [None if i is None else found[i] for i in matched]

    count = sorted(o.color for o in found) == sorted(n.color for n in named)
    color_shape = all(h is not None and h.shape == n.shape for n, h in zip(named, hits))
    size = position = relation = None
    if any(n.size for n in named):
        size = all(h is not None and h.size == n.size for n, h in zip(named, hits) if n.size)
    if any(n.where for n in named):
        position = all(h is not None and h.cell == n.where for n, h in zip(named, hits) if n.where)
    if claims.relation is not None:
        relation = None not in hits[:2] and _relation_holds(hits[0], hits[1], claims.relation, S)
    verdicts = [count, color_shape, size, position, relation]
    return CheckResult(
        passed=all(v for v in verdicts if v is not None),
        count=count,
        color_shape=color_shape,
        size=size,
        position=position,
        relation=relation,
        objects=found,
        matched=tuple(matched),
        claims=claims,
    )

"""Captions of a scene: the spec's canonical forms plus truthful paraphrases.

Every caption is lower-case English and true of the scene. The canonical forms (spec,
"Captions") are always among the templates, and each image's first caption is one of them,
so a model trained on the default data understands prompts written in them. Articles agree
with the next word ("an orange circle"); the spec lets prompts use ``an`` for ``a``, and the
checker accepts both.
"""

from __future__ import annotations

import functools
import string

import numpy as np

from tessera.data.shapes.palette import RELATION_PHRASES, WHERE_PHRASES, inverse_relation
from tessera.data.shapes.scene import Scene, uniforms

__all__ = ["canonical_captions", "canonical_prompt", "caption_templates", "sample_captions"]

# -- paraphrase vocabulary (each alternative must stay true of the scene) ---------------------
_SIZE_ALT = {"small": ("little",), "large": ("big",)}
_WHERE_ALT = {
    "top-left": ("in the upper left corner", "at the top left"),
    "top": ("near the top", "at the top of the image"),
    "top-right": ("in the upper right corner", "at the top right"),
    "left": ("on the left side", "at the left"),
    "center": ("in the middle", "in the middle of the image"),
    "right": ("on the right side", "at the right"),
    "bottom-left": ("in the lower left corner", "at the bottom left"),
    "bottom": ("near the bottom", "at the bottom of the image"),
    "bottom-right": ("in the lower right corner", "at the bottom right"),
}
_REL_ALT = {
    "left of": "left of",
    "right of": "right of",
    "above": "higher than",
    "below": "lower than",
}
# Where each object of a relation scene sits, by the relation of the first to the second.
_SIDES = {
    "left of": ("left", "right"),
    "right of": ("right", "left"),
    "above": ("top", "bottom"),
    "below": ("bottom", "top"),
}

# Templates over fields. One object: A ("a red circle", article agreed), size, color, shape,
# where (spec phrase), where_alt, size_alt. Two objects: A, B, rel (spec phrase of the first
# to the second), rel_inv (second to first), rel_alt, side1/side2, color1/2, shape1/2.
_ONE_CANONICAL: tuple[str, ...] = (
    "{A}",
    "a {size} {color} {shape}",
    "{A} {where}",
    "a {size} {color} {shape} {where}",
)
_ONE_PARAPHRASES: tuple[str, ...] = (
    "there is {A} {where}",
    "there is a {size} {color} {shape} {where}",
    "{A} on a white background",
    "a {size} {color} {shape} on a white background",
    "a picture of {A}",
    "an image of a {size} {color} {shape} {where}",
    "a {shape} that is {color}",
    "a {size} {shape} colored {color}",
    "a single {color} {shape} {where}",
    "{A} {where_alt}",
    "a {size_alt} {color} {shape}",
    "a {size_alt} {color} {shape} {where_alt}",
    "{where} there is {A}",
    "a drawing of a {size} {color} {shape}",
    "one {color} {shape} {where}",
)
_TWO_CANONICAL: tuple[str, ...] = (
    "{A} {rel} {B}",
    "{B} {rel_inv} {A}",  # the reverse relation, also in canonical form and true
)
_TWO_PARAPHRASES: tuple[str, ...] = (
    "{A} sits {rel} {B}",
    "{B} sits {rel_inv} {A}",
    "{A} is {rel} {B}",
    "{B} is {rel_inv} {A}",
    "there is {A} {rel} {B}",
    "{A} and {B}",
    "{B} and {A}",
    "two shapes: {A} and {B}",
    "a small {color1} {shape1} {rel} a small {color2} {shape2}",
    "{A} {side1} and {B} {side2}",
    "{A} placed {rel} {B}",
    "{A} {rel_alt} {B}",
)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _obj(color: str, shape: str) -> str:
    return f"{_article(color)} {color} {shape}"


@functools.cache
def _fields_of(template: str) -> tuple[str, ...]:
    return tuple(f for _, f, _, _ in string.Formatter().parse(template) if f)


def _values(scene: Scene) -> dict[str, tuple[str, ...]]:
    """Field -> alternatives (the first is the spec's wording) for this scene's templates."""
    if scene.relation is None:
        (o,) = scene.objects
        return {
            "A": (_obj(o.color, o.shape),),
            "size": (o.size,),
            "color": (o.color,),
            "shape": (o.shape,),
            "where": (WHERE_PHRASES[o.cell],),
            "where_alt": _WHERE_ALT[o.cell],
            "size_alt": _SIZE_ALT[o.size],
        }
    a, b = scene.objects
    side1, side2 = _SIDES[scene.relation]
    return {
        "A": (_obj(a.color, a.shape),),
        "B": (_obj(b.color, b.shape),),
        "rel": (RELATION_PHRASES[scene.relation],),
        "rel_inv": (RELATION_PHRASES[inverse_relation(scene.relation)],),
        "rel_alt": (_REL_ALT[scene.relation],),
        "side1": (WHERE_PHRASES[side1],),
        "side2": (WHERE_PHRASES[side2],),
        "color1": (a.color,),
        "shape1": (a.shape,),
        "color2": (b.color,),
        "shape2": (b.shape,),
    }


def caption_templates(
    scene: Scene, *, paraphrases: bool = True
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(canonical templates, paraphrase templates) for the scene's kind; paraphrases are empty
    when ``paraphrases`` is False."""
    if scene.relation is None:
        return _ONE_CANONICAL, (_ONE_PARAPHRASES if paraphrases else ())
    return _TWO_CANONICAL, (_TWO_PARAPHRASES if paraphrases else ())


def _below(rng: np.random.Generator, n: int) -> int:
    """A uniform integer in [0, n) (from raw PCG64 bits: stable across NumPy versions)."""
    return min(int(uniforms(rng, 1)[0] * n), n - 1)


def _permutation(rng: np.random.Generator, n: int) -> list[int]:
    """A uniform permutation of range(n) (Fisher-Yates over :func:`uniforms`)."""
    order = list(range(n))
    for i, u in zip(range(n - 1, 0, -1), uniforms(rng, max(n - 1, 0))):
        j = min(int(u * (i + 1)), i)
        order[i], order[j] = order[j], order[i]
    return order


def _fill(
    template: str, values: dict[str, tuple[str, ...]], rng: np.random.Generator | None
) -> str:
    chosen = {}
    for f in _fields_of(template):
        alts = values[f]
        chosen[f] = alts[0] if rng is None or len(alts) == 1 else alts[_below(rng, len(alts))]
    return template.format(**chosen)


def canonical_captions(scene: Scene) -> list[str]:
    """Every canonical-form caption true of ``scene`` (4 for one object; 2 for two objects:
    the drawn relation and its reverse)."""
    values = _values(scene)
    canon, _ = caption_templates(scene, paraphrases=False)
    return [_fill(t, values, None) for t in canon]


def canonical_prompt(scene: Scene) -> str:
    """The most specific canonical caption, the prompt used to evaluate a model on ``scene``:
    ``a {size} {color} {shape} {where}`` for one object, ``a {color} {shape} {relation} a
    {color} {shape}`` (drawn order) for two."""
    caps = canonical_captions(scene)
    return caps[3] if scene.relation is None else caps[0]


def sample_captions(
    scene: Scene, n: int, rng: np.random.Generator, *, paraphrases: bool = True
) -> tuple[str, ...]:
    """``n`` (>= 1) captions of ``scene``, drawn with ``rng``.

    The first is a canonical form; the others are drawn without replacement from all templates
    (canonical and, if ``paraphrases``, paraphrase ones) and repeat only once every template
    has been used.
    """
    values = _values(scene)
    canon, para = caption_templates(scene, paraphrases=paraphrases)
    first = canon[_below(rng, len(canon))]
    captions = [_fill(first, values, rng)]
    pool = [t for t in canon + para if t != first]  # never empty: >= 2 canonical templates
    order: list[int] = []
    while len(captions) < n:
        if not order:
            order = _permutation(rng, len(pool))
        captions.append(_fill(pool[order.pop()], values, rng))
    return tuple(captions)

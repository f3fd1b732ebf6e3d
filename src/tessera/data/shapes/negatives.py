"""Hard negative captions for contrastive training: a canonical prompt with ONE claim changed.

CLIP trained only against the other captions of a random batch rarely meets two captions that
differ in a single attribute, so it learns colour (every batch separates it) but not position
or relation (the shipped ``shapes`` CLIP: 39% zero-shot position accuracy). Going beyond the
CLIP paper, each training image also sees captions identical to its own except for one claim
(a colour, a shape, a size, a cell, the relation, or the order of two objects) and must score
them below its own. Negatives never name an excluded (held-out) colour-shape pair, so no
held-out pair's text enters training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import numpy as np

from tessera.data.shapes.checker import Claims, parse_prompt
from tessera.data.shapes.palette import (
    CELLS,
    COLORS,
    RELATION_PHRASES,
    RELATIONS,
    SHAPES,
    SIZES,
    WHERE_PHRASES,
)
from tessera.errors import DataError

__all__ = ["claims_text", "hard_negatives", "one_claim_changes"]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def claims_text(claims: Claims) -> str:
    """The canonical prompt that states exactly ``claims`` (inverse of ``parse_prompt``)."""
    if claims.relation is not None:
        a, b = claims.objects
        return (
            f"{_article(a.color)} {a.color} {a.shape} {RELATION_PHRASES[claims.relation]} "
            f"{_article(b.color)} {b.color} {b.shape}"
        )
    (o,) = claims.objects
    words = [w for w in (o.size, o.color, o.shape) if w]
    text = f"{_article(words[0])} {' '.join(words)}"
    return text if o.where is None else f"{text} {WHERE_PHRASES[o.where]}"


def one_claim_changes(claims: Claims) -> list[Claims]:
    """Every claim set that differs from ``claims`` in exactly one claim (two objects keep
    differing in colour or shape, as the data set draws them)."""
    out: list[Claims] = []
    objs = list(claims.objects)

    def with_object(i: int, **change: str) -> Claims:
        new = list(objs)
        new[i] = dataclasses.replace(objs[i], **change)
        return Claims(tuple(new), claims.relation)

    for i, o in enumerate(objs):
        out += [with_object(i, color=c) for c in COLORS if c != o.color]
        out += [with_object(i, shape=s) for s in SHAPES if s != o.shape]
        if o.size is not None:
            out += [with_object(i, size=s) for s in SIZES if s != o.size]
        if o.where is not None:
            out += [with_object(i, where=w) for w in CELLS if w != o.where]
    if claims.relation is not None:
        out += [Claims(claims.objects, r) for r in RELATIONS if r != claims.relation]
        out.append(Claims(claims.objects[::-1], claims.relation))  # the objects swapped
        out = [
            c
            for c in out
            if (c.objects[0].color, c.objects[0].shape) != (c.objects[1].color, c.objects[1].shape)
        ]
    return out


def _names_excluded(claims: Claims, excluded: set[str]) -> bool:
    return any(f"{o.color} {o.shape}" in excluded for o in claims.objects)


def hard_negatives(
    prompt: str, k: int, rng: np.random.Generator, *, exclude_pairs: Iterable[str] = ()
) -> list[str]:
    """Up to ``k`` distinct captions that contradict ``prompt`` in one claim each, drawn
    without replacement with ``rng``; [] when ``prompt`` is not in a canonical form.

    exclude_pairs: "colour shape" pairs no negative may name (the held-out pairs).
    """
    try:
        claims = parse_prompt(prompt)
    except DataError:
        return []
    excluded = set(exclude_pairs)
    pool: Sequence[Claims] = [
        c for c in one_claim_changes(claims) if not _names_excluded(c, excluded)
    ]
    if not pool or k <= 0:
        return []
    pick = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return [claims_text(pool[int(i)]) for i in pick]

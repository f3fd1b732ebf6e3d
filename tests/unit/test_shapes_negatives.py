"""Hard negative captions: one claim changed, canonical, never a held-out pair."""

from __future__ import annotations

import numpy as np
import pytest

from tessera.data.shapes import parse_prompt
from tessera.data.shapes.negatives import claims_text, hard_negatives, one_claim_changes

PROMPTS = [
    "a red circle",
    "a large yellow square",
    "an orange triangle at the bottom",
    "a small red circle in the top left corner",
    "a blue square to the left of a red triangle",
    "a purple circle above an orange circle",
]


def _differences(a, b) -> int:
    n = sum(
        (x.color, x.shape, x.size, x.where) != (y.color, y.shape, y.size, y.where)
        for x, y in zip(a.objects, b.objects)
    )
    return n + (a.relation != b.relation)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_claims_text_inverts_parse_prompt(prompt: str) -> None:
    assert claims_text(parse_prompt(prompt)) == prompt


@pytest.mark.parametrize("prompt", PROMPTS)
def test_every_negative_is_canonical_and_changes_one_claim(prompt: str) -> None:
    claims = parse_prompt(prompt)
    changes = one_claim_changes(claims)
    assert changes and claims not in changes
    for c in changes:
        again = parse_prompt(claims_text(c))  # canonical: the checker's parser reads it
        assert again == c
        swapped = c.relation is not None and c.objects == claims.objects[::-1]
        assert swapped or _differences(c, claims) == 1
        if c.relation is not None:  # two objects always differ in colour or shape
            a, b = c.objects
            assert (a.color, a.shape) != (b.color, b.shape)


def test_one_object_counts() -> None:
    # colour 5 + shape 2 (+ size 1 + cell 8 when named)
    assert len(one_claim_changes(parse_prompt("a red circle"))) == 7
    assert len(one_claim_changes(parse_prompt("a small red circle in the center"))) == 16


def test_hard_negatives_are_distinct_seeded_and_skip_held_out_pairs() -> None:
    held = ("green triangle", "blue circle", "purple square")
    for seed in range(20):
        negs = hard_negatives("a red triangle", 6, np.random.default_rng(seed), exclude_pairs=held)
        assert len(negs) == len(set(negs)) == 6 and "a red triangle" not in negs
        assert not any(p in n for n in negs for p in held)
    a = hard_negatives("a red circle on the left", 4, np.random.default_rng(3))
    assert a == hard_negatives("a red circle on the left", 4, np.random.default_rng(3))


def test_non_canonical_captions_get_no_negatives() -> None:
    assert hard_negatives("a picture of a red ball", 4, np.random.default_rng(0)) == []
    assert hard_negatives("a red circle", 0, np.random.default_rng(0)) == []

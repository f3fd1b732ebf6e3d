"""Captions of shapes scenes: canonical forms present, truthful, held-out pairs respected."""

from __future__ import annotations

import re

import pytest

from tessera.config.shapes import COLORS, DEFAULT_HELD_OUT, SHAPES, ShapesConfig
from tessera.data.shapes import (
    ShapesSource,
    canonical_captions,
    canonical_prompt,
    evaluation_prompts,
    parse_prompt,
    sample_scene,
)
from tessera.data.shapes.palette import inverse_relation
from tessera.errors import DataError


def _form(caption: str) -> str | None:
    """Which canonical template a caption is written in, or None for a paraphrase."""
    try:
        claims = parse_prompt(caption)
    except DataError:
        return None
    if claims.relation is not None:
        return "two"
    o = claims.objects[0]
    return {(False, False): "c-s", (True, False): "z-c-s", (False, True): "c-s-w"}.get(
        (o.size is not None, o.where is not None), "z-c-s-w"
    )


def _agrees(claims, scene) -> bool:
    """Do parsed canonical claims describe the scene truthfully?"""
    if claims.relation is None:
        if scene.relation is not None:
            return False
        (c,), (o,) = claims.objects, scene.objects
        return (
            (c.color, c.shape) == (o.color, o.shape)
            and c.size in (None, o.size)
            and c.where in (None, o.cell)
        )
    a, b = scene.objects
    pair = [(c.color, c.shape) for c in claims.objects]
    if pair == [(a.color, a.shape), (b.color, b.shape)]:
        return claims.relation == scene.relation
    if pair == [(b.color, b.shape), (a.color, a.shape)]:
        return claims.relation == inverse_relation(scene.relation)
    return False


def test_every_canonical_template_appears():
    src = ShapesSource(split="train", n=300)
    forms = {_form(c) for i in range(len(src)) for c in src.captions(i)}
    assert {"c-s", "z-c-s", "c-s-w", "z-c-s-w", "two"} <= forms
    assert None in forms  # and paraphrases


def test_canonical_captions_are_true_and_complete():
    cfg = ShapesConfig()
    for i in range(400):
        scene = sample_scene(cfg, "eval", i)
        caps = canonical_captions(scene)
        assert len(caps) == (4 if scene.relation is None else 2)
        assert len(set(caps)) == len(caps)
        for c in caps:
            assert _agrees(parse_prompt(c), scene), (c, scene)
        prompt = canonical_prompt(scene)
        claims = parse_prompt(prompt)
        if scene.relation is None:
            assert claims.objects[0].size and claims.objects[0].where  # the most specific form
        else:
            assert claims.relation == scene.relation  # drawn order


def test_captions_truthful_lowercase_and_first_is_canonical():
    cfg = ShapesConfig()
    src = ShapesSource(cfg, split="eval", n=600)
    sizes = {"small": {"small", "little"}, "large": {"large", "big"}}
    for i in range(len(src)):
        scene, caps = src.scene(i), src.captions(i)
        assert len(caps) == cfg.n_captions
        assert _form(caps[0]) is not None
        for c in caps:
            assert c == c.lower() == c.strip() and "  " not in c
            words = set(re.findall(r"[a-z]+", c))
            assert words & set(COLORS) == {o.color for o in scene.objects}, c
            assert words & set(SHAPES) == {o.shape for o in scene.objects}, c
            said = words & {"small", "little", "large", "big"}
            assert said <= set().union(*(sizes[o.size] for o in scene.objects)), c
            if _form(c) is not None:
                assert _agrees(parse_prompt(c), scene), (c, scene)


def test_articles_agree():
    src = ShapesSource(split="eval", n=300)
    caps = {c for i in range(len(src)) for c in src.captions(i)}
    assert not any(" a orange" in f" {c}" for c in caps)
    assert any(c.startswith("an orange") for c in caps)


@pytest.mark.parametrize("n", [1, 3, 5, 12])
def test_n_captions_and_no_paraphrases(n):
    src = ShapesSource(ShapesConfig(n_captions=n, paraphrases=False), split="eval", n=100)
    for i in range(len(src)):
        caps = src.captions(i)
        assert len(caps) == n
        assert all(_form(c) is not None for c in caps)
        distinct = len(canonical_captions(src.scene(i)))
        assert len(set(caps)) == min(n, distinct)  # repeats only once all forms are used


def test_captions_deterministic_and_independent_of_scene_stream():
    a = ShapesSource(ShapesConfig(n_captions=5), split="train", n=50)
    b = ShapesSource(ShapesConfig(n_captions=2), split="train", n=50)
    again = ShapesSource(ShapesConfig(n_captions=5), split="train", n=50)  # a fresh source
    for i in range(50):
        assert a.captions(i) == again.captions(i)
        assert a.scene(i) == b.scene(i)  # caption settings never move a scene


def test_held_out_pairs_never_captioned_in_train():
    src = ShapesSource(split="train", n=20_000)
    pattern = re.compile(
        "|".join(
            rf"\b{c} {s}\b|\b{s} that is {c}\b|\b{s} colored {c}\b"
            for c, s in (p.split() for p in DEFAULT_HELD_OUT)
        )
    )
    for i in range(len(src)):
        for c in src.captions(i):
            assert not pattern.search(c), c


def test_evaluation_prompts():
    prompts = evaluation_prompts(500)
    assert prompts == evaluation_prompts(500)
    assert all(_form(p) in ("z-c-s-w", "two") for p in prompts)
    held = sum(any(h in p for h in DEFAULT_HELD_OUT) for p in prompts)
    assert held / len(prompts) >= 0.15

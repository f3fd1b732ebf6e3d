"""The shapes checker: prompt parsing, the spec's pixel math, and end-to-end verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

import tessera
from tessera.config.shapes import ShapesConfig
from tessera.data.shapes import (
    PALETTE,
    Claims,
    ObjectClaim,
    Scene,
    SceneObject,
    canonical_captions,
    canonical_prompt,
    check_image,
    detect_objects,
    parse_prompt,
    pixel_coverage,
    render_scene,
    sample_scene,
)
from tessera.data.shapes.checker import classify_shape
from tessera.data.shapes.render import coverage_mask
from tessera.errors import DataError


# -- parsing ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a red circle", Claims(objects=(ObjectClaim("red", "circle"),))),
        ("a small blue square", Claims(objects=(ObjectClaim("blue", "square", "small"),))),
        (
            "a green triangle in the top left corner",
            Claims(objects=(ObjectClaim("green", "triangle", None, "top-left"),)),
        ),
        (
            "a large purple circle at the bottom",
            Claims(objects=(ObjectClaim("purple", "circle", "large", "bottom"),)),
        ),
        (
            "a yellow square to the left of a red triangle",
            Claims(
                objects=(ObjectClaim("yellow", "square"), ObjectClaim("red", "triangle")),
                relation="left of",
            ),
        ),
        (
            "an orange circle below an orange square",
            Claims(
                objects=(ObjectClaim("orange", "circle"), ObjectClaim("orange", "square")),
                relation="below",
            ),
        ),
        ("an orange circle", Claims(objects=(ObjectClaim("orange", "circle"),))),
        ("a orange circle", Claims(objects=(ObjectClaim("orange", "circle"),))),
        ("  A Red  Circle. ", Claims(objects=(ObjectClaim("red", "circle"),))),
    ],
)
def test_parse_canonical_forms(prompt, expected):
    assert parse_prompt(prompt) == expected


def test_parse_every_where_and_relation():
    for cell, phrase in [
        ("top-left", "in the top left corner"),
        ("top", "at the top"),
        ("top-right", "in the top right corner"),
        ("left", "on the left"),
        ("center", "in the center"),
        ("right", "on the right"),
        ("bottom-left", "in the bottom left corner"),
        ("bottom", "at the bottom"),
        ("bottom-right", "in the bottom right corner"),
    ]:
        assert parse_prompt(f"a small red circle {phrase}").objects[0].where == cell
    for rel, phrase in [
        ("left of", "to the left of"),
        ("right of", "to the right of"),
        ("above", "above"),
        ("below", "below"),
    ]:
        assert parse_prompt(f"a red circle {phrase} a blue square").relation == rel


@pytest.mark.parametrize(
    "prompt",
    [
        "",
        "red circle",
        "a pink circle",
        "a red hexagon",
        "a red circle next to a blue square",
        "a red circle in the top left",
        "two red circles",
        "a small red circle to the left of a blue square",  # sizes not in the relation form
        "a red circle on the left to the left of a blue square",
        "there is a red circle",
    ],
)
def test_parse_rejects_non_canonical(prompt):
    with pytest.raises(DataError) as info:
        parse_prompt(prompt)
    assert "\n" not in str(info.value)
    with pytest.raises(DataError):
        check_image(np.full((32, 32, 3), 255, np.uint8), prompt)


# -- pixel math ---------------------------------------------------------------------------------
def test_pixel_coverage_math():
    blue = np.array(PALETTE["blue"], float)
    half = 255.0 + 0.5 * (blue - 255.0)
    img = np.array(
        [[[255, 255, 255], PALETTE["red"], half, [0, 0, 0]]], dtype=np.float32
    )  # (1, 4, 3)
    img = np.repeat(img, 4, axis=0)  # (4, 4, 3)
    idx, a = pixel_coverage(img)
    assert a[0, 0] == 0.0
    assert idx[0, 1] == 0 and a[0, 1] == pytest.approx(1.0)  # red
    assert idx[0, 2] == 4 and a[0, 2] == pytest.approx(0.5, abs=1e-6)  # blue, half covered
    assert a[0, 3] == 1.0  # black: alpha clipped to 1 for its nearest colour
    # Nearest segment: alpha_c(p) = <W-p, W-c>/|W-c|^2 for the hand-computed case.
    p = np.array([200.0, 120.0, 60.0])
    scores = []
    for c in PALETTE.values():
        v = 255.0 - np.array(c, float)
        al = float(np.clip((255.0 - p) @ v / (v @ v), 0, 1))
        scores.append((np.sum((255.0 - p - al * v) ** 2), al))
    best = int(np.argmin([s for s, _ in scores]))
    idx, a = pixel_coverage(p.reshape(1, 1, 3).astype(np.float32))
    assert idx[0, 0] == best and a[0, 0] == pytest.approx(scores[best][1], rel=1e-5)


def _canvas(size=100):
    """White float image (size, size, 3) in [0, 1] (floats keep coverages exact)."""
    return np.ones((size, size, 3))


def _paint(img, cov, x0, y0, color):
    """Blend a coverage patch (h, w) into img at (x0, y0) with a palette colour."""
    h, w = cov.shape
    c = np.array(PALETTE[color], float) / 255.0
    region = img[y0 : y0 + h, x0 : x0 + w]
    img[y0 : y0 + h, x0 : x0 + w] = region + cov[..., None] * (c - region)
    return img


def test_hard_square_measures_exactly():
    img = _paint(_canvas(), np.ones((20, 20)), 30, 40, "red")
    (o,) = detect_objects(img)
    assert (o.color, o.shape, o.size, o.cell) == ("red", "square", "small", "center")
    assert o.width == o.height == 20.0 and o.area == 400.0 and o.fill == 1.0
    assert (o.cx, o.cy) == (40.0, 50.0) and o.pixels == 400


def test_antialiased_square_keeps_fill_one():
    cov = coverage_mask("square", 20, 2, 1, 1)  # box from x = 30.5 to 50.5
    (o,) = detect_objects(_paint(_canvas(), cov, 30, 30, "green"))
    assert o.width == pytest.approx(20.0, abs=1e-4) and o.fill == pytest.approx(1.0, abs=1e-4)
    assert o.cx == pytest.approx(40.5, abs=1e-4) and o.shape == "square"


def test_disc_fill_is_pi_over_four():
    (o,) = detect_objects(_paint(_canvas(), coverage_mask("circle", 60, 8, 0, 0), 20, 20, "blue"))
    assert o.fill == pytest.approx(math.pi / 4, abs=0.01)
    assert o.width == pytest.approx(60, abs=0.5) and o.height == pytest.approx(60, abs=0.5)
    assert (o.shape, o.size) == ("circle", "large")
    assert (o.cx, o.cy) == (pytest.approx(50.0, abs=1e-3), pytest.approx(50.0, abs=1e-3))


def test_triangle_fill_half_and_centroid_low():
    (o,) = detect_objects(
        _paint(_canvas(), coverage_mask("triangle", 60, 8, 0, 0), 20, 20, "yellow")
    )
    assert o.fill == pytest.approx(0.5, abs=0.02) and o.shape == "triangle"
    assert o.cy == pytest.approx(20 + 40, abs=0.3)  # centroid at 2/3 of the height


def test_non_shapes_get_no_shape():
    rect = detect_objects(_paint(_canvas(), np.ones((20, 40)), 10, 10, "red"))
    assert rect[0].shape is None  # aspect 2
    down = coverage_mask("triangle", 40, 4, 0, 0)[::-1]  # pointing down: no taper, fill 0.5
    assert detect_objects(_paint(_canvas(), down, 10, 10, "red"))[0].shape is None


def test_small_components_and_white_ignored():
    assert detect_objects(np.full((64, 64, 3), 255, np.uint8)) == ()
    img = _paint(_canvas(64), np.ones((6, 6)), 5, 5, "red")  # 36 px < 1% of 4096
    assert detect_objects(img) == ()
    img = _paint(img, np.ones((7, 7)), 40, 40, "red")  # 49 px >= 40.96
    assert len(detect_objects(img)) == 1


def test_four_connectivity_splits_diagonal_neighbours():
    img = _paint(_canvas(64), np.ones((10, 10)), 10, 10, "purple")
    img = _paint(img, np.ones((10, 10)), 20, 20, "purple")  # touches only at a corner
    assert len(detect_objects(img)) == 2


def test_classify_shape_thresholds():
    assert classify_shape(10, 10, 0.86, 10, 10) == "square"
    assert classify_shape(10, 10, 0.8599, 10, 10) == "circle"
    assert classify_shape(10, 10, 0.62, 10, 10) == "circle"
    assert classify_shape(10, 10, 0.6199, 10, 10) is None
    assert classify_shape(10, 10, 0.5, 2, 3) == "triangle"  # taper exactly 1.5
    assert classify_shape(10, 10, 0.5, 2, 2.99) is None
    assert classify_shape(10, 10, 0.75, 2, 8) == "circle"  # fill outside [0.35, 0.75)
    assert classify_shape(10, 10, 0.35, 2, 8) == "triangle"
    assert classify_shape(15, 10, 1.0, 10, 10) == "square"  # aspect 1.5 inclusive
    assert classify_shape(15.1, 10, 1.0, 10, 10) is None
    assert classify_shape(6.7, 10, 1.0, 10, 10) == "square"
    assert classify_shape(6.6, 10, 1.0, 10, 10) is None


def test_size_and_relation_thresholds():
    S = 100
    # max(w, h) < 0.32 S is small: 31 px small, 32 px large.
    assert detect_objects(_paint(_canvas(S), np.ones((31, 31)), 10, 10, "red"))[0].size == "small"
    assert detect_objects(_paint(_canvas(S), np.ones((32, 32)), 10, 10, "red"))[0].size == "large"
    # Relation needs centres >= S/8 = 12.5 px apart.
    for gap, holds in ((13, True), (12, False)):
        img = _paint(_canvas(S), np.ones((10, 10)), 20, 45, "red")
        img = _paint(img, np.ones((10, 10)), 20 + gap, 60, "blue")
        r = check_image(img, "a red square to the left of a blue square")
        assert r.relation is holds


# -- verdicts on rendered scenes -----------------------------------------------------------------
def _obj(color, shape, size, cx, cy, cell):
    side = round({"small": 0.24, "large": 0.40}[size] * 64)
    return SceneObject(color=color, shape=shape, size=size, cx=cx, cy=cy, side=side, cell=cell)


def _render(*objects, relation=None):
    return render_scene(Scene(canvas=64, objects=objects, relation=relation, split="eval", index=0))


def test_hand_made_verdicts():
    one = _render(_obj("red", "circle", "large", 11, 12, "top-left"))
    ok = check_image(one, "a large red circle in the top left corner")
    assert ok.passed and ok.count and ok.color_shape and ok.size and ok.position
    assert ok.relation is None
    assert check_image(one, "a red circle").claim_results() == {
        "count": True,
        "color_shape": True,
        "size": None,
        "position": None,
        "relation": None,
    }
    colour = check_image(one, "a large blue circle in the top left corner")
    assert not colour.passed and not colour.count and not colour.color_shape
    shape = check_image(one, "a large red square in the top left corner")
    assert not shape.passed and shape.count and not shape.color_shape
    assert shape.size and shape.position
    where = check_image(one, "a large red circle in the bottom right corner")
    assert not where.passed and where.position is False and where.color_shape and where.size
    size = check_image(one, "a small red circle in the top left corner")
    assert not size.passed and size.size is False and size.position

    two = _render(
        _obj("red", "circle", "small", 16, 32, "left"),
        _obj("blue", "square", "small", 48, 32, "right"),
        relation="left of",
    )
    assert check_image(two, "a red circle to the left of a blue square").passed
    assert check_image(two, "a blue square to the right of a red circle").passed
    swapped = check_image(two, "a red circle to the right of a blue square")
    assert not swapped.passed and swapped.relation is False
    assert swapped.count and swapped.color_shape
    above = check_image(two, "a red circle above a blue square")
    assert above.relation is False
    extra = check_image(two, "a red circle")
    assert not extra.passed and not extra.count and extra.color_shape
    missing = check_image(one, "a red circle to the left of a blue square")
    assert not missing.passed and not missing.count and missing.relation is False


def test_same_colour_objects_matched_by_shape():
    img = _render(
        _obj("green", "square", "small", 16, 32, "left"),
        _obj("green", "circle", "small", 48, 32, "right"),
    )
    assert check_image(img, "a green circle to the right of a green square").passed
    assert check_image(img, "a green square to the left of a green circle").passed
    assert not check_image(img, "a green circle to the left of a green square").passed


def test_accepts_pil_tensor_and_float_arrays():
    scene = sample_scene(ShapesConfig(), "eval", 7)
    img = render_scene(scene)
    prompt = canonical_prompt(scene)
    base = check_image(img, prompt)
    assert base.passed
    tensor = torch.from_numpy(img).permute(2, 0, 1).float() / 255.0  # (3, H, W) in [0, 1]
    for other in (Image.fromarray(img), tensor, tensor[None], img / 255.0, parse_prompt(prompt)):
        r = check_image(img, other) if isinstance(other, Claims) else check_image(other, prompt)
        assert r.passed and len(r.objects) == len(base.objects)
        assert r.objects[0].area == pytest.approx(base.objects[0].area, rel=1e-5)
    with pytest.raises(DataError, match="square"):
        check_image(np.zeros((32, 48, 3), np.uint8), prompt)
    with pytest.raises(DataError):
        check_image(np.zeros((32, 32), np.uint8), prompt)
    with pytest.raises(DataError):
        check_image(torch.zeros(4, 32, 32), prompt)


def test_top_level_export():
    assert tessera.check_image is check_image


# -- the spec's promise: rendered images pass, also blurred; other scenes' prompts fail -------
@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_rendered_eval_images_pass_plain_and_blurred(size):
    cfg = ShapesConfig(size=size)
    n = 2000
    plain = blurred = 0
    for i in range(n):
        scene = sample_scene(cfg, "eval", i)
        img = render_scene(scene)
        claims = parse_prompt(canonical_prompt(scene))  # size + where, or the relation
        plain += check_image(img, claims).passed
        soft = Image.fromarray(img).filter(ImageFilter.GaussianBlur(size / 64))
        blurred += check_image(np.asarray(soft), claims).passed
    assert plain / n >= 0.995, plain / n
    assert blurred / n >= 0.995, blurred / n


def test_prompts_of_other_scenes_are_rejected():
    cfg = ShapesConfig()
    n, rejected = 1000, 0
    for i in range(n):
        scene = sample_scene(cfg, "eval", i)
        truths = set(canonical_captions(scene))
        j = i + 1
        while canonical_prompt(sample_scene(cfg, "eval", j)) in truths:
            j += 1
        prompt = canonical_prompt(sample_scene(cfg, "eval", j))
        rejected += not check_image(render_scene(scene), prompt).passed
    assert rejected / n >= 0.995, rejected / n

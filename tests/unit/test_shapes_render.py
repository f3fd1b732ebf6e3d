"""Rendering of shapes scenes: exact palette interiors, anti-aliasing, geometry, all sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tessera.config.shapes import ShapesConfig
from tessera.data.shapes import PALETTE, Scene, SceneObject, check_image, render_scene, sample_scene
from tessera.data.shapes.captions import canonical_prompt
from tessera.data.shapes.render import coverage_counts, coverage_mask, object_patch


def _one(shape, color="red", size="large", cx=32.0, cy=32.0, canvas=64, cell="center"):
    side = round({"small": 0.24, "large": 0.40}[size] * canvas)
    obj = SceneObject(color=color, shape=shape, size=size, cx=cx, cy=cy, side=side, cell=cell)
    return Scene(canvas=canvas, objects=(obj,), relation=None, split="eval", index=0)


def test_palette_matches_spec():
    assert PALETTE == {
        "red": (220, 38, 38),
        "orange": (245, 140, 20),
        "yellow": (235, 200, 20),
        "green": (30, 160, 70),
        "blue": (30, 90, 220),
        "purple": (140, 50, 190),
    }


def test_square_coverage_aligned_and_offset():
    m = coverage_mask("square", 10, 4, 0, 0)
    assert m.shape == (10, 10) and np.all(m == 1.0)
    m = coverage_mask("square", 10, 4, 2, 1)  # box starts 2/4 px right, 1/4 px down
    assert m.shape == (11, 11)
    np.testing.assert_array_equal(m[5, :], [0.5] + [1.0] * 9 + [0.5])
    np.testing.assert_array_equal(m[:, 5], [0.75] + [1.0] * 9 + [0.25])
    assert m.sum() == pytest.approx(100.0)


@pytest.mark.parametrize("side", [8, 15, 26, 61, 102])
def test_circle_and_triangle_areas(side):
    circle = coverage_mask("circle", side, 4, 1, 3)
    triangle = coverage_mask("triangle", side, 4, 3, 0)
    # Midpoint sampling on a 4x finer grid: error shrinks like the perimeter / k.
    assert circle.sum() == pytest.approx(math.pi * side**2 / 4, rel=0.03)
    assert triangle.sum() == pytest.approx(side**2 / 2, rel=0.06)
    assert circle.max() == 1.0 and triangle.max() == 1.0


def test_triangle_points_up():
    m = coverage_mask("triangle", 26, 4, 0, 0)
    rows = m.sum(axis=1)  # soft width of each row, top to bottom
    assert np.all(np.diff(rows) > 0)  # widens downward
    assert rows[-1] == pytest.approx(25.5, abs=0.2) and rows[0] == pytest.approx(0.5, abs=0.2)
    top = m[0]
    assert np.argmax(top) in (12, 13)  # apex at the middle of the top edge


@pytest.mark.parametrize("size", [32, 64, 128, 256])
def test_interiors_exact_palette_and_background_white(size):
    cfg = ShapesConfig(size=size)
    for i in range(60):
        scene = sample_scene(cfg, "eval", i)
        img = render_scene(scene)
        assert img.dtype == np.uint8 and img.shape == (size, size, 3)
        inside = np.zeros((size, size), dtype=bool)
        for o in scene.objects:
            c = np.array(PALETTE[o.color], dtype=np.uint8)
            # The pixel at the shape's centroid is interior for every shape.
            cy = o.cy + (o.side / 6 if o.shape == "triangle" else 0.0)
            np.testing.assert_array_equal(img[int(cy), int(o.cx)], c)
            h = o.side // 2 + 2
            y0, x0 = max(int(o.cy) - h, 0), max(int(o.cx) - h, 0)
            inside[y0 : int(o.cy) + h + 1, x0 : int(o.cx) + h + 1] = True
            # Every pixel of the box is on the segment white -> colour (AA blends only).
            box = img[y0 : int(o.cy) + h + 1, x0 : int(o.cx) + h + 1].astype(float)
            v = 255.0 - c.astype(float)
            ch = int(np.argmax(v))  # the channel that measures coverage most finely
            t = (255.0 - box[..., ch : ch + 1]) / v[ch]
            assert np.abs(255.0 - t * v - box).max() <= 1.0  # up to rounding
            # Pixels fully covered are exactly the palette colour; there are many of them.
            full = np.all(box == c, axis=-1).sum()
            assert full >= 0.2 * o.side**2
        assert np.all(img[~inside] == 255)


def test_object_patch_exact_where_covered():
    for shape in ("circle", "square", "triangle"):
        cov = coverage_mask(shape, 15, 4, 1, 2)
        patch = object_patch(shape, 15, 4, 1, 2, "purple")
        assert np.all(patch[cov == 1.0] == PALETTE["purple"])
        assert np.all(patch[cov == 0.0] == 255)
    assert not coverage_counts("circle", 15, 4, 1, 2).flags.writeable  # cached: never mutated


@pytest.mark.parametrize("size", range(32, 513, 8))
def test_every_supported_size_renders(size):
    cfg = ShapesConfig(size=size)
    for i in range(2):
        img = render_scene(sample_scene(cfg, "train", i))
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert (img != 255).any()


def test_render_at_another_size_rescales():
    scene = sample_scene(ShapesConfig(size=64), "eval", 5)
    for size in (32, 128, 256):
        img = render_scene(scene, size)
        assert img.shape == (size, size, 3)
        assert check_image(img, canonical_prompt(scene)).passed


def test_supersample_changes_only_edges():
    scene = sample_scene(ShapesConfig(), "eval", 2)
    a, b = render_scene(scene, supersample=4), render_scene(scene, supersample=8)
    diff = np.abs(a.astype(int) - b.astype(int)).max(axis=-1)
    assert (diff > 0).sum() < 0.05 * 64 * 64
    hard = render_scene(scene, supersample=1)  # no anti-aliasing: only white and palette
    colours = {tuple(p) for p in hard.reshape(-1, 3)}
    assert colours <= {(255, 255, 255), *PALETTE.values()}


def test_overlapping_objects_composite():
    a = SceneObject(color="red", shape="square", size="large", cx=30, cy=30, side=26, cell="center")
    b = SceneObject(
        color="blue", shape="circle", size="large", cx=40, cy=40, side=26, cell="center"
    )
    img = render_scene(Scene(canvas=64, objects=(a, b), relation=None, split="eval", index=0))
    np.testing.assert_array_equal(img[40, 40], PALETTE["blue"])  # the later object on top
    np.testing.assert_array_equal(img[20, 20], PALETTE["red"])
    assert np.all(img[:10, :10] == 255)

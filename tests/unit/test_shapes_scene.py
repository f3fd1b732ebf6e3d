"""Scenes of the shapes data set: determinism, splits, held-out pairs, geometry, sources."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tessera.config.shapes import DEFAULT_HELD_OUT, ShapesConfig
from tessera.data.example import Example
from tessera.data.shapes import (
    CELLS,
    ShapesSource,
    render_scene,
    sample_scene,
)
from tessera.data.shapes.palette import CELL_INDEX, box_side, cell_of
from tessera.data.shapes.scene import PAIRS
from tessera.errors import ConfigError

HELD = {tuple(p.split()) for p in DEFAULT_HELD_OUT}


def _digest(config: ShapesConfig, split: str, n: int) -> str:
    """sha256 over pixels and captions of the first n examples."""
    src = ShapesSource(config, split=split, n=n)
    h = hashlib.sha256()
    for i in range(n):
        h.update(src.image(i).tobytes())
        h.update("\n".join(src.captions(i)).encode())
    return h.hexdigest()


def test_sizes_follow_spec():
    assert [box_side("small", s) for s in (32, 64, 256)] == [8, 15, 61]
    assert [box_side("large", s) for s in (32, 64, 256)] == [13, 26, 102]


def test_same_seed_index_same_scene_and_pixels():
    cfg = ShapesConfig()
    for i in (0, 1, 77, 123456):
        a, b = sample_scene(cfg, "train", i), sample_scene(cfg, "train", i)
        assert a == b
        assert render_scene(a).tobytes() == render_scene(b).tobytes()


def test_identical_in_a_fresh_process():
    code = (
        "import hashlib\n"
        "from tessera.config.shapes import ShapesConfig\n"
        "from tessera.data.shapes import ShapesSource\n"
        "src = ShapesSource(ShapesConfig(size=32), split='eval', n=40)\n"
        "h = hashlib.sha256()\n"
        "for i in range(40):\n"
        "    h.update(src.image(i).tobytes())\n"
        "    h.update('\\n'.join(src.captions(i)).encode())\n"
        "print(h.hexdigest())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(ShapesConfig(size=32), "eval", 40)


def test_golden_values():
    """Pins the streams: a change here changes every example of the data set (and with it
    every model trained on it), so it must be deliberate."""
    s = sample_scene(ShapesConfig(), "train", 0)
    assert s.relation == "right of"
    assert [(o.color, o.shape, o.size, o.side, o.cell) for o in s.objects] == [
        ("yellow", "triangle", "small", 15, "right"),
        ("orange", "square", "small", 15, "left"),
    ]
    assert s.objects[0].cx == pytest.approx(46.048028832743064, abs=1e-12)
    assert s.objects[1].cy == pytest.approx(33.5976522277193, abs=1e-12)
    assert _digest(ShapesConfig(), "train", 20) == (
        "7fc30ab1d4190544ad5820b857806eec2062a4cb5b50c2ccacbb759b8fa1be7e"
    )
    assert _digest(ShapesConfig(), "eval", 20) == (
        "9302524fbec4fe58a9e5cdad2d614cface6e965a5343588cca4f91f95e2c2e2b"
    )


def test_seed_and_split_change_examples():
    cfg = ShapesConfig()
    train = [sample_scene(cfg, "train", i) for i in range(50)]
    evals = [sample_scene(cfg, "eval", i) for i in range(50)]
    other = [sample_scene(cfg.replace(seed=1), "train", i) for i in range(50)]
    strip = lambda s: (s.objects, s.relation)  # noqa: E731
    assert sum(strip(a) == strip(b) for a, b in zip(train, evals)) == 0
    assert sum(strip(a) == strip(b) for a, b in zip(train, other)) == 0


def test_train_never_holds_held_out_pairs_and_eval_does():
    cfg = ShapesConfig()
    seen: set[tuple[str, str]] = set()
    for i in range(20_000):
        for o in sample_scene(cfg, "train", i).objects:
            seen.add((o.color, o.shape))
    assert not seen & HELD
    assert seen == set(PAIRS) - HELD  # every other pair does occur

    n_eval = 2000
    with_held = sum(
        any((o.color, o.shape) in HELD for o in sample_scene(cfg, "eval", i).objects)
        for i in range(n_eval)
    )
    # Natural rate: 1/6 of one-object scenes, ~31% of two-object scenes -> ~23% overall.
    assert 0.18 <= with_held / n_eval <= 0.30


def test_custom_and_empty_held_out_lists():
    cfg = ShapesConfig(held_out=("red circle",))
    pairs = {(o.color, o.shape) for i in range(3000) for o in sample_scene(cfg, "train", i).objects}
    assert ("red", "circle") not in pairs and ("green", "triangle") in pairs
    cfg = ShapesConfig(held_out=())
    pairs = {(o.color, o.shape) for i in range(3000) for o in sample_scene(cfg, "train", i).objects}
    assert pairs == set(PAIRS)


@pytest.mark.parametrize("size", [32, 64, 256])
def test_geometry_follows_spec(size):
    cfg = ShapesConfig(size=size)
    kinds = {1: 0, 2: 0}
    for i in range(3000):
        s = sample_scene(cfg, "eval", i)
        kinds[len(s.objects)] += 1
        for o in s.objects:
            assert o.side == box_side(o.size, size)
            half = o.side / 2
            assert half <= o.cx <= size - half and half <= o.cy <= size - half
            assert o.cell == cell_of(o.cx, o.cy, size)
        if s.relation is None:
            (o,) = s.objects
            col, row = CELL_INDEX[o.cell]
            for centre, c in ((o.cx, col), (o.cy, row)):
                target = (2 * c + 1) * size / 6
                clamped = min(max(target, o.side / 2), size - o.side / 2)
                # jitter <= S/32 around the cell centre, unless clamping pulled it inward
                assert (
                    abs(centre - target) <= size / 32 + 1e-9 or abs(centre - clamped) <= size / 32
                )
        else:
            a, b = s.objects
            assert a.size == b.size == "small"
            assert (a.color, a.shape) != (b.color, b.shape)
            dx, dy = a.cx - b.cx, a.cy - b.cy
            want = {"left of": -dx, "right of": dx, "above": -dy, "below": dy}[s.relation]
            assert abs(want - size / 2) <= size / 16 + 1e-9  # centres S/2 apart, +-2 jitters
            other = dy if s.relation in ("left of", "right of") else dx
            assert abs(other) <= size / 16 + 1e-9
    assert 0.45 <= kinds[2] / 3000 <= 0.55  # equal probability of the two kinds


def test_all_cells_sizes_relations_occur():
    cfg = ShapesConfig()
    scenes = [sample_scene(cfg, "train", i) for i in range(2000)]
    assert {s.objects[0].cell for s in scenes if s.relation is None} == set(CELLS)
    assert {s.objects[0].size for s in scenes if s.relation is None} == {"small", "large"}
    assert {s.relation for s in scenes} == {None, "left of", "right of", "above", "below"}


def test_p_two_objects_extremes():
    one = ShapesConfig(p_two_objects=0.0)
    two = ShapesConfig(p_two_objects=1.0)
    assert all(len(sample_scene(one, "train", i).objects) == 1 for i in range(300))
    assert all(len(sample_scene(two, "train", i).objects) == 2 for i in range(300))


def test_bad_split_index_and_held_out():
    with pytest.raises(ConfigError, match="split"):
        sample_scene(ShapesConfig(), "test", 0)
    with pytest.raises(ConfigError, match="index"):
        sample_scene(ShapesConfig(), "train", -1)
    everything = tuple(f"{c} {s}" for c, s in PAIRS)
    with pytest.raises(ConfigError, match="held_out"):
        sample_scene(ShapesConfig(held_out=everything), "train", 0)
    assert len(sample_scene(ShapesConfig(held_out=everything), "eval", 0).objects) >= 1


def test_scene_metadata_is_json():
    s = sample_scene(ShapesConfig(), "eval", 3)
    d = json.loads(json.dumps(s.to_dict()))
    assert d["index"] == 3 and d["split"] == "eval" and len(d["objects"]) == len(s.objects)
    assert dataclasses.asdict(s.objects[0]) == d["objects"][0]


# -- ShapesSource ------------------------------------------------------------------------------
def test_source_yields_examples():
    src = ShapesSource(ShapesConfig(size=32, n_captions=3), split="eval", n=5, start=10)
    assert len(src) == 5
    examples = list(src)
    assert len(examples) == 5
    for i, ex in enumerate(examples):
        assert isinstance(ex, Example)
        assert isinstance(ex.image, Image.Image) and ex.image.mode == "RGB"
        assert ex.image.size == (32, 32)
        assert ex.key == f"eval-{10 + i:06d}"
        assert len(ex.captions) == 3 and all(c == c.strip().lower() and c for c in ex.captions)
        np.testing.assert_array_equal(np.asarray(ex.image), src.image(i))
        assert ex.captions == src.captions(i)
        assert src[i].key == ex.key
    with pytest.raises(IndexError):
        src.image(5)


def test_source_endless_and_shards_disjoint():
    endless = ShapesSource(n=None)
    with pytest.raises(TypeError):
        len(endless)
    it = iter(endless)
    assert [next(it).key for _ in range(3)] == ["train-000000", "train-000001", "train-000002"]

    src = ShapesSource(split="train", n=10, start=5)
    shards = [src.shard(r, 3) for r in range(3)]
    assert [len(s) for s in shards] == [4, 3, 3]
    keys = [ex.key for s in shards for ex in s]
    assert sorted(keys) == [ex.key for ex in src]
    assert src.shard(1, 3).index(0) == 6
    # Sharding again (ranks, then dataloader workers) stays disjoint and covering.
    nested = [s.shard(w, 2) for s in shards for w in range(2)]
    assert sorted(ex.key for s in nested for ex in s) == sorted(keys)
    with pytest.raises(ConfigError):
        src.shard(3, 3)


def test_source_validates():
    with pytest.raises(ConfigError):
        ShapesSource(split="validation")
    with pytest.raises(ConfigError):
        ShapesSource(n=-1)
    assert "eval" in repr(ShapesSource(split="eval", n=2))

"""Filters (caption length, aspect ratio, predicates) and transforms (resize, crops, tensors,
collate, the worker-splitting IterableDataset)."""

import numpy as np
import pytest
import torch
from PIL import Image

from tessera.config import DataConfig
from tessera.data import DataReport, Example, ImageTextDataset, ImageTransform, collate
from tessera.data.filters import (
    AspectRatioFilter,
    CaptionLengthFilter,
    apply_filters,
    aspect_ok,
    build_filters,
    caption_length_ok,
)
from tessera.data.inspect import describe_values, inspect_source, make_grid
from tessera.data.transforms import (
    center_crop,
    example_generator,
    random_crop,
    resize_shorter,
    to_tensor,
)


def ex(w=32, h=32, captions=("a caption",), key="k"):
    return Example(image=Image.new("RGB", (w, h), (10, 20, 30)), captions=tuple(captions), key=key)


def test_pure_predicates():
    assert caption_length_ok("abc", 1, 3) and not caption_length_ok("abcd", 1, 3)
    assert not caption_length_ok("", 1, 3)
    assert aspect_ok(200, 100, 0.5, 2.0) and aspect_ok(100, 200, 0.5, 2.0)
    assert not aspect_ok(201, 100, 0.5, 2.0) and not aspect_ok(100, 201, 0.5, 2.0)
    assert not aspect_ok(10, 0, 0.5, 2.0)


def test_caption_length_filter_drops_captions_then_examples():
    r = DataReport()
    f = CaptionLengthFilter(3, 10)
    out = f(ex(captions=("ok caption", "no", "x" * 11)), r)
    assert out.captions == ("ok caption",)
    assert r.repaired == {"caption_dropped_too_short": 1, "caption_dropped_too_long": 1}
    assert f(ex(captions=("no",)), r) is None and r.filtered["caption_length"] == 1
    same = ex()
    assert f(same, r) is same


def test_aspect_filter_paper_bounds():
    r = DataReport()
    f = AspectRatioFilter(0.5, 2.0)
    assert f(ex(64, 32), r) is not None and f(ex(32, 64), r) is not None
    assert f(ex(65, 32), r) is None and f(ex(32, 65), r) is None
    assert r.filtered["aspect_ratio"] == 2


def test_build_and_apply_filters_in_order():
    cfg = DataConfig(min_caption_chars=2, max_caption_chars=20)

    def no_dogs(e):
        return "dog" not in " ".join(e.captions)

    filters = build_filters(cfg, [no_dogs, lambda e: e.key != "skip"])
    assert [f.name for f in filters] == ["caption_length", "aspect_ratio", "no_dogs", "predicate_1"]
    r = DataReport(cfg)
    assert apply_filters(ex(captions=("a dog",)), filters, r) is None
    assert apply_filters(ex(key="skip"), filters, r) is None
    assert apply_filters(ex(100, 10), filters, r) is None
    assert apply_filters(ex(), filters, r) is not None
    assert r.filtered == {"no_dogs": 1, "predicate_1": 1, "aspect_ratio": 1}
    assert r.bad_fraction == 0.0  # filtering is policy, not bad data


def test_resize_shorter_side():
    assert resize_shorter(Image.new("RGB", (300, 200)), 64).size == (96, 64)
    assert resize_shorter(Image.new("RGB", (200, 300)), 64).size == (64, 96)
    assert resize_shorter(Image.new("RGB", (20, 10)), 64).size == (128, 64)  # upsamples too
    assert resize_shorter(Image.new("RGB", (64, 65)), 64).size == (64, 65)
    assert resize_shorter(Image.new("RGB", (301, 300)), 64, resample="lanczos").size == (64, 64)


def test_resize_is_antialiased():
    # a 1-px checkerboard averages to mid-gray when reduced; aliasing would keep extremes
    a = (np.indices((256, 256)).sum(0) % 2 * 255).astype(np.uint8)
    small = np.asarray(resize_shorter(Image.fromarray(a).convert("RGB"), 32)).astype(int)
    assert np.abs(small - 127.5).max() < 20


def test_crops():
    img = Image.fromarray(np.arange(10 * 12 * 3, dtype=np.uint8).reshape(10, 12, 3))
    c = center_crop(img, 8)
    assert np.array_equal(np.asarray(c), np.asarray(img)[1:9, 2:10])
    r1 = random_crop(img, 8, 123)
    r2 = random_crop(img, 8, torch.Generator().manual_seed(123))
    assert np.array_equal(np.asarray(r1), np.asarray(r2))
    corners = {np.asarray(random_crop(img, 8, s))[0, 0, 0] for s in range(50)}
    assert len(corners) > 5  # positions vary with the seed
    with pytest.raises(ValueError):
        center_crop(img, 11)


def test_to_tensor():
    img = Image.fromarray(np.array([[[0, 128, 255]] * 3] * 2, dtype=np.uint8))
    t = to_tensor(img)
    assert t.shape == (3, 2, 3) and t.dtype == torch.float32
    assert t[0].max() == 0 and t[2].min() == 1.0 and t[1, 0, 0] == pytest.approx(128 / 255)


def test_image_transform_train_is_reproducible_by_key_and_epoch():
    noise = np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)
    e = Example(image=Image.fromarray(noise), captions=("c",), key="img-1")
    tr = ImageTransform(32, train=True, seed=7)
    a, b = tr(e)["image"], tr(e)["image"]
    assert a.shape == (3, 32, 32) and torch.equal(a, b)
    tr.set_epoch(1)
    assert not torch.equal(a, tr(e)["image"])
    ev = ImageTransform(32)(e)
    assert ev["captions"] == ("c",) and ev["key"] == "img-1"
    g1, g2 = example_generator(1, 2, "k"), example_generator(1, 2, "k")
    assert torch.equal(torch.rand(3, generator=g1), torch.rand(3, generator=g2))


def test_collate():
    items = [ImageTransform(16)(ex(key=str(i), captions=(f"c{i}", "x"))) for i in range(3)]
    b = collate(items)
    assert b["images"].shape == (3, 3, 16, 16) and b["images"].dtype == torch.float32
    assert b["captions"] == [("c0", "x"), ("c1", "x"), ("c2", "x")]
    assert b["keys"] == ["0", "1", "2"]


def test_image_text_dataset_splits_a_plain_iterable_across_workers():
    examples = [ex(key=str(i)) for i in range(11)]
    ds = ImageTextDataset(examples, ImageTransform(16))
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, collate_fn=collate)
    keys = [k for b in loader for k in b["keys"]]
    assert sorted(keys, key=int) == [str(i) for i in range(11)]
    assert len(list(ImageTextDataset(examples))) == 11


def test_inspect_statistics():
    examples = [
        ex(32, 16, ("a red circle", "a circle"), "a"),
        ex(64, 32, ("the blue square",), "b"),
    ]
    stats = inspect_source(examples, grid_size=2, cell=16)
    assert stats.examples == 2 and stats.captions == 3
    assert stats.caption_words == {"min": 2, "median": 3, "mean": 2.667, "max": 3}
    assert stats.vocabulary_size == 6 and dict(stats.common_words)["circle"] == 2
    assert stats.image_width["max"] == 64 and stats.image_height["min"] == 16
    assert stats.grid.size == (2 * 18 + 2, 18 + 2)
    assert "caption words: min 2" in "\n".join(stats.lines())
    assert describe_values([]) == {"min": 0, "median": 0, "mean": 0.0, "max": 0}
    assert make_grid([], cols=3).size == (3 * 66 + 2, 68)


def test_collate_passes_worker_counts_on_combined():
    from tessera.data.report import REPORT_KEY, ReportDelta

    report = DataReport(DataConfig())
    items = []
    for i, reason in enumerate(["corrupt_image", None, "zero_byte"]):
        worker = DataReport(report.config)
        worker.see(2)
        worker.record_yield()
        if reason:
            worker.skip(reason, f"k{i}")
        item = {"image": torch.zeros(3, 8, 8), "captions": ("c",), "key": f"k{i}"}
        item[REPORT_KEY] = ReportDelta(report.uid, worker.take_state(), final=i == 2)
        items.append(item)
    batch = collate(items)
    delta = batch[REPORT_KEY]
    assert delta.final and delta.state["seen"] == 6 and delta.state["yielded"] == 3
    assert delta.state["skipped"] == {"corrupt_image": 1, "zero_byte": 1}
    assert REPORT_KEY not in collate([{k: v for k, v in items[0].items() if k != REPORT_KEY}])

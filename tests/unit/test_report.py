"""HTML evaluation reports: self-contained, escaped, parseable, finite SVG, atomic writes."""

import base64
import io
import itertools
import math
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from helpers.browser import HEADLESS_ARGS
from tessera.reporting import html as rep
from tessera.reporting.html import (
    PALETTE,
    BarPlot,
    Image,
    LinePlot,
    Table,
    Text,
    format_value,
    grid_png,
    nice_ticks,
    png_bytes,
    render_report,
    write_report,
)

EVIL = "<script>alert('x')</script>&"
VOID = {"meta", "img", "br", "hr", "input", "link"}
NUMERIC_ATTRS = {"x", "y", "x1", "y1", "x2", "y2", "cx", "cy", "r", "width", "height"}


class Collector(HTMLParser):
    """Collects every element (tag, attrs) and checks that non-void elements nest properly."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)

    def tags(self, name):
        return [a for t, a in self.elements if t == name]


def parse(doc: str) -> Collector:
    c = Collector()
    c.feed(doc)
    c.close()
    assert c.errors == []
    assert c.stack == []
    return c


def tile(seed: int, h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def decode_data_uri(src: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    with PILImage.open(io.BytesIO(base64.b64decode(src[len(prefix) :]))) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def svg_numbers(c: Collector) -> list[float]:
    """Every number in the geometry attributes of SVG elements (parsing fails on nan/inf)."""
    nums = []
    in_svg_tags = {"svg", "rect", "line", "circle", "polyline", "polygon", "path", "text"}
    for tag, attrs in c.elements:
        if tag not in in_svg_tags:
            continue
        for k, v in attrs.items():
            if k in NUMERIC_ATTRS and tag != "svg":
                nums.append(float(v))
            elif k in ("points", "d", "viewbox", "transform"):
                assert not re.search(r"nan|inf", v, re.I), (tag, k, v)
                nums.extend(float(m) for m in re.findall(r"-?\d+(?:\.\d+)?(?:e-?\d+)?", v))
    return nums


def sample_report(**overrides) -> dict:
    kwargs = dict(
        title="Eval",
        sections=[
            Table.from_metrics({"fid": 12.345678, "n": 10000, "is": {"mean": 3.2, "std": 0.04}}),
            Image("grid", grid_png([tile(i) for i in range(6)], ncol=3), caption="six tiles"),
            Image("one", png_bytes(tile(9, 5, 7))),
            LinePlot("FID vs blur", "blur radius", "FID", {"a": [(0, 10.0), (2, 20.0), (4, 35.5)]}),
            LinePlot("empty-ish", "x", "y", {"b": [(1.0, 2.0)]}),
            BarPlot("fidelity", ["count", "size"], [0.9, 0.5]),
            Text("notes", "plain note"),
        ],
        provenance={"tessera": "0.1.0", "N": 10000, "resize": "bicubic"},
    )
    kwargs.update(overrides)
    return kwargs


# ------------------------------------------------------------------------------ structure


def test_report_parses_with_one_svg_per_plot_and_one_img_per_image():
    doc = render_report(**sample_report())
    c = parse(doc)
    assert doc.startswith("<!DOCTYPE html>")
    assert len(c.tags("svg")) == 3
    assert doc.count("<svg") == 3
    imgs = c.tags("img")
    assert len(imgs) == 2
    assert doc.count('<img src="data:image/png;base64,') == 2
    assert len(c.tags("section")) == 7
    assert c.tags("script") == []
    # provenance and metrics tables
    text = " ".join(c.text)
    for needle in ("12.35", "10000", "is.mean", "bicubic", "six tiles"):
        assert needle in text


def test_embedded_images_decode_to_the_same_pixels():
    tiles = [tile(i) for i in range(5)]
    single = tile(42, 5, 7)
    doc = render_report(
        title="t",
        sections=[Image("grid", grid_png(tiles, ncol=2, pad=1)), Image("one", png_bytes(single))],
    )
    grid_src, single_src = (a["src"] for a in parse(doc).tags("img"))
    np.testing.assert_array_equal(decode_data_uri(single_src), single)
    g = decode_data_uri(grid_src)
    assert g.shape == (3 * 8 + 4 * 1, 2 * 8 + 3 * 1, 3)
    for i, t in enumerate(tiles):
        r, col = divmod(i, 2)
        y, x = 1 + r * 9, 1 + col * 9
        np.testing.assert_array_equal(g[y : y + 8, x : x + 8], t)


def test_images_are_pixelated_and_scaled_up():
    doc = render_report(title="t", sections=[Image("one", png_bytes(tile(1, 64, 64)))])
    (img,) = parse(doc).tags("img")
    assert "pixelated" in img["class"]
    assert "image-rendering: pixelated" in doc
    assert "max-width: 100%" in doc
    assert int(img["width"]) >= 4 * 64 and int(img["width"]) % 64 == 0
    assert int(img["height"]) == int(img["width"])
    doc = render_report(title="t", sections=[Image("one", png_bytes(tile(1, 64, 64)), scale=3)])
    assert parse(doc).tags("img")[0]["width"] == "192"


def test_image_from_path_and_non_png_is_embedded_as_png(tmp_path):
    arr = tile(3, 6, 10)
    p = tmp_path / "x.png"
    p.write_bytes(png_bytes(arr))
    bmp = io.BytesIO()
    PILImage.fromarray(arr).save(bmp, format="BMP")
    doc = render_report(
        title="t",
        sections=[Image("path", p), Image("str path", str(p)), Image("bmp", bmp.getvalue())],
    )
    imgs = parse(doc).tags("img")
    assert len(imgs) == 3  # one per section: the loop below must not pass on none
    for img in imgs:
        np.testing.assert_array_equal(decode_data_uri(img["src"]), arr)


def test_no_external_resources_anywhere():
    doc = render_report(**sample_report())
    assert "http://" not in doc and "https://" not in doc
    for tag, attrs in parse(doc).elements:
        for k in ("src", "href", "xlink:href"):
            if k in attrs:
                assert attrs[k].startswith(("data:", "#")), (tag, k, attrs[k])
    assert "<link" not in doc and "<script" not in doc and "@import" not in doc
    assert "Content-Security-Policy" in doc


def test_user_text_is_escaped_everywhere():
    doc = render_report(
        title=EVIL,
        sections=[
            Table(EVIL, [(EVIL, EVIL), ("n", 3)]),
            Image(EVIL, png_bytes(tile(0)), caption=EVIL),
            LinePlot(EVIL, EVIL, EVIL, {EVIL: [(0, 1), (1, 2)]}, caption=EVIL),
            BarPlot(EVIL, [EVIL, "b"], [0.5, 0.25], y_label=EVIL, values_b=[1, 0], label_a=EVIL),
            Text(EVIL, EVIL + "\nline two"),
        ],
        provenance={EVIL: EVIL},
    )
    c = parse(doc)
    assert c.tags("script") == []
    assert "<script>" not in doc
    assert "&lt;script&gt;" in doc
    # the text round-trips through the parser unchanged
    assert sum(EVIL in t for t in c.text) >= 10


# ----------------------------------------------------------------------------------- plots


def test_nan_none_and_inf_points_are_skipped_and_lines_break():
    plot = LinePlot(
        "gaps",
        "x",
        "y",
        {
            "a": [(0, 1.0), (1, float("nan")), (2, 3.0), (3, 4.0), (None, 5.0), (5, math.inf)],
            "all-nan": [(0, float("nan")), (1, None)],
            "empty": [],
        },
    )
    doc = render_report(title="t", sections=[plot])
    c = parse(doc)
    polylines = c.tags("polyline")
    assert len(polylines) == 1  # (0,1) is alone; (2,3)-(3,4) is the only segment
    assert len(polylines[0]["points"].split()) == 2
    assert len(c.tags("circle")) == 3 + 1  # series "a" markers + its legend marker
    assert all(math.isfinite(v) for v in svg_numbers(c))
    assert "all-nan" in doc and "empty" in doc  # still in the legend


@pytest.mark.parametrize(
    "series",
    [
        {"one point": [(3.0, 7.0)]},
        {"flat": [(0, 5.0), (1, 5.0), (2, 5.0)]},
        {"zero": [(0, 0.0), (0, 0.0)]},
        {"nothing": [(float("nan"), float("nan"))]},
        {},
        {"tiny": [(0, 1e-9), (1, 2e-9)], "huge": [(0, 1e9), (1, 3e9)]},
        {"negative": [(-8, -3.5), (-2, -0.25)]},
    ],
)
def test_degenerate_line_plots_give_finite_svg(series):
    c = parse(render_report(title="t", sections=[LinePlot("p", "x", "y", series)]))
    nums = svg_numbers(c)
    assert nums and all(math.isfinite(v) for v in nums)
    assert len(c.tags("svg")) == 1


def test_line_plot_has_ticks_labels_legend_and_distinct_colours():
    series = {f"model {i}": [(b, 10.0 + i * b) for b in range(9)] for i in range(3)}
    doc = render_report(title="t", sections=[LinePlot("FID", "blur radius", "FID", series)])
    c = parse(doc)
    text = c.text
    for label in ("blur radius", "FID", "model 0", "model 1", "model 2", "0", "8"):
        assert label in text
    strokes = {a["stroke"] for a in c.tags("polyline")}
    assert strokes == set(PALETTE[:3])
    # the points land inside the plotting area: within the svg box
    (svg,) = c.tags("svg")
    w, h = float(svg["width"]), float(svg["height"])
    for pl in c.tags("polyline"):
        for xy in pl["points"].split():
            x, y = map(float, xy.split(","))
            assert 0 < x < w and 0 < y < h


def test_bar_plot_values_printed_and_two_series():
    labels = ["count", "colour+shape", "size", "position", "relation", "strict"]
    a = [0.93, 0.81, None, 0.6, 0.452, 1.0]
    b = [0.9, 0.7, 0.72, float("nan"), 0.3, 0.2]
    plot = BarPlot("fidelity", labels, a, values_b=b, label_a="seen", label_b="held-out")
    c = parse(render_report(title="t", sections=[plot]))
    text = c.text
    for s in ("93.0%", "45.2%", "100.0%", "72.0%", "n/a", "seen", "held-out", *labels):
        assert s in text
    fills = [r["fill"] for r in c.tags("rect")]
    assert fills.count(PALETTE[0]) == 5 + 1  # 5 finite bars + legend swatch
    assert fills.count(PALETTE[1]) == 5 + 1
    assert all(math.isfinite(v) for v in svg_numbers(c))
    # percentages within [0, 1] get a 0..100% axis
    assert "100%" in text and "0%" in text


def test_bar_plot_y_max_format_and_validation():
    plot = BarPlot("n", ["a", "b"], [3, 12], y_max=10, value_format="{:.0f}")
    c = parse(render_report(title="t", sections=[plot]))
    assert "12" in c.text and "3" in c.text
    (svg,) = c.tags("svg")
    for r in c.tags("rect")[1:]:  # bars past y_max are cut at the top, not drawn outside
        assert float(r["y"]) >= 0 and float(r["y"]) + float(r["height"]) <= float(svg["height"])
    with pytest.raises(ValueError):
        BarPlot("bad", ["a", "b"], [1.0])
    with pytest.raises(ValueError):
        BarPlot("bad", ["a"], [1.0], values_b=[1.0, 2.0])
    negative = BarPlot("neg", ["a", "b"], [-2.0, 5.0], value_format="{:+.1f}")
    c = parse(render_report(title="t", sections=[negative]))
    assert "-2.0" in c.text and "+5.0" in c.text
    assert all(math.isfinite(v) for v in svg_numbers(c))
    empty = BarPlot("empty", [], [])
    assert all(
        math.isfinite(v) for v in svg_numbers(parse(render_report(title="t", sections=[empty])))
    )


def test_nice_ticks():
    lo, hi, ticks = nice_ticks(0.0, 8.0)
    assert lo <= 0 and hi >= 8 and ticks[0] == lo and ticks[-1] == hi
    steps = {round(b - a, 9) for a, b in itertools.pairwise(ticks)}
    assert len(steps) == 1
    lo, hi, ticks = nice_ticks(5.0, 5.0)
    assert lo < 5 < hi and len(ticks) >= 2
    lo, hi, ticks = nice_ticks(0.0, 0.0)
    assert lo < 0 < hi
    lo, hi, ticks = nice_ticks(3.1, 97.2)
    assert lo <= 3.1 and hi >= 97.2 and 3 <= len(ticks) <= 12
    with pytest.raises(ValueError):
        nice_ticks(0.0, math.inf)


# ------------------------------------------------------------------------------ values etc.


def test_format_value():
    assert format_value(12.345678) == "12.35"
    assert format_value(0.000123456) == "0.0001235"
    assert format_value(10000) == "10000"
    assert format_value(np.int64(7)) == "7"
    assert format_value(np.float32(0.5)) == "0.5"
    assert format_value(123456.7) == "123457"
    assert format_value(float("nan")) == "nan"
    assert format_value(-math.inf) == "-inf"
    assert format_value(True) == "True"
    assert format_value(None) == "—"
    assert format_value("bicubic") == "bicubic"
    assert format_value([1, 2.34567]) == "[1, 2.346]"
    assert format_value(np.array(2.5)) == "2.5"


def test_table_from_rows_and_metrics():
    t = Table("m", {"fid": 1.23456, "per_claim": {"count": 0.5, "size": {"big": 1}}, "empty": {}})
    assert t.rows == [
        ("fid", 1.23456),
        ("per_claim.count", 0.5),
        ("per_claim.size.big", 1),
        ("empty", {}),
    ]
    c = parse(render_report(title="t", sections=[t, Table("rows", [("a", 1), ("b", "x")])]))
    tds = [d for d in c.text if d.strip()]
    assert "1.235" in tds and "per_claim.size.big" in tds
    assert [a.get("class") for a in c.tags("td")].count(
        "num"
    ) == 4  # numbers only: fid, count, big, a


def test_unknown_section_type_is_rejected():
    with pytest.raises(TypeError):
        render_report(title="t", sections=["not a section"])


def test_png_bytes_and_grid_png_validation():
    arr = tile(5, 4, 6)
    with PILImage.open(io.BytesIO(png_bytes(arr))) as im:
        np.testing.assert_array_equal(np.asarray(im), arr)
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4)
    with PILImage.open(io.BytesIO(png_bytes(grey))) as im:
        np.testing.assert_array_equal(np.asarray(im), grey)
    with pytest.raises(ValueError, match="uint8"):
        png_bytes(arr.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        png_bytes(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError):
        grid_png([], ncol=2)
    with pytest.raises(ValueError):
        grid_png([tile(0, 4, 4), tile(1, 5, 4)], ncol=2)
    with pytest.raises(ValueError):
        grid_png([tile(0)], ncol=1, captions=["a", "b"])


def test_grid_png_layout_background_and_captions():
    tiles = [np.zeros((10, 12, 3), np.uint8) for _ in range(5)]
    with PILImage.open(io.BytesIO(grid_png(tiles, ncol=3, pad=2))) as im:
        g = np.asarray(im)
    assert g.shape == (2 * 10 + 3 * 2, 3 * 12 + 4 * 2, 3)
    assert (g == 255).all(axis=2).sum() == g.shape[0] * g.shape[1] - 5 * 10 * 12  # white rest
    caps = ["a red circle left of a blue square", "b", "", "d", "e"]
    with PILImage.open(io.BytesIO(grid_png(tiles, ncol=3, pad=2, captions=caps))) as im:
        g2 = np.asarray(im)
    assert g2.shape[1] == g.shape[1] and g2.shape[0] > g.shape[0]
    np.testing.assert_array_equal(g2[2:12, 2:14], 0)  # tiles untouched by the captions
    assert (g2 < 200).any(axis=2)[12:26].any()  # some caption ink below the first row
    # ncol larger than the number of tiles shrinks to fit
    with PILImage.open(io.BytesIO(grid_png(tiles[:2], ncol=8, pad=0))) as im:
        assert im.size == (24, 10)


# ----------------------------------------------------------------------------------- write


def test_write_report_is_atomic_and_complete(tmp_path, monkeypatch):
    path = tmp_path / "out" / "report.html"
    kwargs = sample_report()
    assert write_report(path, **kwargs) == path
    text = path.read_text(encoding="utf-8")
    assert text == render_report(**kwargs)
    assert text.rstrip().endswith("</html>")
    assert sorted(os.listdir(path.parent)) == ["report.html"]

    # a failing render leaves the old file alone
    with pytest.raises(TypeError):
        write_report(path, title="t", sections=[object()])
    assert path.read_text(encoding="utf-8") == text

    # a failure at the rename leaves the old file and no temporary behind
    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(rep.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_report(path, title="new", sections=[])
    monkeypatch.undo()
    assert path.read_text(encoding="utf-8") == text
    assert sorted(os.listdir(path.parent)) == ["report.html"]

    # overwriting works and leaves a readable, complete file
    write_report(str(path), title="second", sections=[Text("n", "x")])
    assert "<title>second</title>" in path.read_text(encoding="utf-8")
    assert sorted(os.listdir(path.parent)) == ["report.html"]


# -------------------------------------------------------------------------------- browser

CHROMIUM = shutil.which("chromium") or (
    "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
)


@pytest.mark.slow
@pytest.mark.skipif(
    CHROMIUM is None and os.environ.get("CI") != "true",
    reason="chromium is not installed (under CI=true this fails instead)",
)
def test_report_renders_in_headless_chromium(tmp_path):
    assert CHROMIUM is not None, "the browser check needs Debian's chromium under CI=true"
    rng = np.random.default_rng(0)
    tiles = [np.full((64, 64, 3), rng.integers(0, 256, 3), np.uint8) for _ in range(8)]
    html_path = write_report(
        tmp_path / "report.html",
        title="browser check",
        sections=[
            Image("samples", grid_png(tiles, ncol=4)),
            LinePlot("FID vs blur", "blur", "FID", {"a": [(b, 5.0 + b * b) for b in range(9)]}),
            BarPlot("fidelity", ["count", "size", "strict"], [0.9, 0.6, 0.3]),
        ],
    )
    shot = tmp_path / "shot.png"
    cmd = [
        CHROMIUM,
        *HEADLESS_ARGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--screenshot={shot}",
        "--window-size=1000,1400",
        html_path.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, timeout=60, capture_output=True)
    with PILImage.open(shot) as im:
        px = np.asarray(im.convert("RGB")).astype(np.int16)
    non_white = (px < 245).any(axis=2).mean()
    assert 0.03 < non_white < 0.9, non_white
    bar = np.array([int(PALETTE[0][i : i + 2], 16) for i in (1, 3, 5)], np.int16)
    near_bar = (np.abs(px - bar) <= 3).all(axis=2).sum()
    assert near_bar > 2000, near_bar  # the bars (and the line) are drawn in the first colour

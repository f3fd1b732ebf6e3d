"""Self-contained HTML reports for evaluation runs.

A report is one HTML file that opens offline in any browser: images are embedded as base64 PNG
data URIs, plots are inline SVG drawn here, the CSS is inline, and there is no JavaScript (a
Content-Security-Policy meta tag forbids loading anything that is not inline). Every string that
comes from the caller is HTML-escaped.

    write_report(out / "report.html", title="FID", sections=[
        Table.from_metrics(metrics),
        Image("Samples", grid_png(tiles, ncol=8)),
        LinePlot("FID vs blur", "blur radius", "FID", {"model A": [(0, 12.3), (2, 30.1)]}),
        BarPlot("Fidelity per claim", ["count", "size"], [0.91, 0.84]),
        Text("Notes", "N=10000 samples, bicubic resize."),
    ], provenance={"tessera": __version__, "command": "tessera eval fid ..."})
"""

from __future__ import annotations

import base64
import html
import io
import math
import numbers
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from tessera.data.images import grid_png, png_bytes
from tessera.io import atomic_write_text

__all__ = [
    "PALETTE",
    "BarPlot",
    "Image",
    "LinePlot",
    "Table",
    "Text",
    "format_value",
    "grid_png",
    "nice_ticks",
    "png_bytes",
    "render_report",
    "write_report",
]

# Okabe-Ito colours (distinguishable with the common colour-vision deficiencies); yellow last,
# since it is faint on white.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
_MARKERS = ("circle", "square", "triangle", "diamond", "triangle_down", "cross")
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_FONT = 12  # px, plot text
_CHAR_W = 0.6  # estimated average glyph width of a sans-serif font, in ems
_GRID = "#e6e6e6"
_AXIS = "#444444"
_INK = "#222222"


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


# ------------------------------------------------------------------------------------ values


def _scalar(v: Any) -> Any:
    """Unwrap 0-d numpy arrays / torch tensors to Python scalars."""
    if getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        return v.item()
    return v


def format_value(v: Any) -> str:
    """Human-readable text of a metric value: ints plain, floats to 4 significant digits (plain
    digits from 1e4 to 1e15 rather than an exponent), ``None`` as a dash, lists element-wise."""
    v = _scalar(v)
    if v is None:
        return "—"
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        x = float(v)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x == 0:
            return "0"
        if 1e4 <= abs(x) < 1e15:
            return f"{x:.0f}"
        return f"{x:.4g}"
    if isinstance(v, str):
        return v
    if isinstance(v, Mapping):
        return "{" + ", ".join(f"{k}: {format_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list | tuple | np.ndarray):
        items = list(v)
        shown = ", ".join(format_value(x) for x in items[:16])
        more = f", … ({len(items)} items)" if len(items) > 16 else ""
        return f"[{shown}{more}]"
    return str(v)


def _is_number(v: Any) -> bool:
    v = _scalar(v)
    return isinstance(v, numbers.Real) and not isinstance(v, bool | np.bool_)


def _finite(v: Any) -> float | None:
    """``float(v)`` if it is a finite number, else None (None, NaN, inf, non-numbers)."""
    v = _scalar(v)
    if v is None or isinstance(v, str):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping) and v:
            rows.extend(_flatten(v, key + "."))
        else:
            rows.append((key, v))
    return rows


# ---------------------------------------------------------------------------------- sections


@dataclass
class Table:
    """A two-column table. ``rows`` may be a mapping (e.g. the ``metrics.json`` dict); nested
    mappings flatten to dotted keys."""

    title: str
    rows: Sequence[tuple[str, Any]] | Mapping[str, Any] = ()
    headers: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.rows, Mapping):
            self.rows = _flatten(self.rows)
        else:
            self.rows = [(str(k), v) for k, v in self.rows]

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], title: str = "Metrics") -> Table:
        return cls(title, metrics, headers=("metric", "value"))


@dataclass
class Image:
    """An embedded image: PNG bytes, a path to any image Pillow reads (re-encoded as PNG), or a
    uint8 array. Shown pixelated and scaled up by an integer ``scale`` (default: the largest
    up to 8 that keeps it within 720 px wide), never wider than the page."""

    title: str
    png: bytes | str | os.PathLike | np.ndarray
    caption: str = ""
    scale: int | None = None


@dataclass
class LinePlot:
    """Lines through ``(x, y)`` points, one colour and marker shape per series. Points with a
    missing or non-finite coordinate are skipped, and the line breaks there."""

    title: str
    x_label: str
    y_label: str
    series: Mapping[str, Sequence[tuple[float | None, float | None]]]
    caption: str = ""


@dataclass
class BarPlot:
    """Bars with their values printed above; an optional second series (``values_b``) is drawn
    beside the first, e.g. "seen" (``label_a``) vs "held-out" (``label_b``). ``y_max`` defaults
    to 1 for percentages within [0, 1], else to a round number above the largest value.
    Missing or non-finite values show as "n/a"."""

    title: str
    labels: Sequence[str]
    values: Sequence[float | None]
    y_max: float | None = None
    value_format: str = "{:.1%}"
    values_b: Sequence[float | None] | None = None
    label_a: str = ""
    label_b: str = ""
    y_label: str = ""
    caption: str = ""

    def __post_init__(self) -> None:
        if len(self.values) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but {len(self.values)} values")
        if self.values_b is not None and len(self.values_b) != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels but {len(self.values_b)} values_b")


@dataclass
class Text:
    """A note; shown as preformatted-wrapped text (line breaks kept), escaped."""

    title: str
    body: str


Section = Table | Image | LinePlot | BarPlot | Text


# ------------------------------------------------------------------------------------ images


def _image_png(src: bytes | str | os.PathLike | np.ndarray) -> bytes:
    if isinstance(src, np.ndarray):
        return png_bytes(src)
    data = bytes(src) if isinstance(src, bytes | bytearray | memoryview) else Path(src).read_bytes()
    if data.startswith(_PNG_SIGNATURE):
        return data
    with PILImage.open(io.BytesIO(data)) as im:  # any other format: re-encode as PNG
        im.load()
        if im.mode not in ("RGB", "RGBA", "L", "LA"):
            im = im.convert("RGBA" if "A" in im.getbands() else "RGB")
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        return buf.getvalue()


# ------------------------------------------------------------------------------------- ticks


def _nice_step(span: float, n: int) -> float:
    raw = span / max(n, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0):
        if raw <= m * mag * (1 + 1e-9):
            return m * mag
    return 10.0 * mag


def nice_ticks(lo: float, hi: float, n: int = 5) -> tuple[float, float, list[float]]:
    """``(axis_lo, axis_hi, ticks)``: about ``n`` intervals of a round step (1, 2, 2.5 or 5 times
    a power of ten) covering ``[lo, hi]``. An empty range is widened around its value."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"axis range must be finite, got [{lo}, {hi}]")
    lo, hi = min(lo, hi), max(lo, hi)
    if hi - lo <= 1e-12 * max(abs(lo), abs(hi)):
        d = abs(lo) * 0.1 or 1.0
        lo, hi = lo - d, hi + d
    span = hi - lo
    if not math.isfinite(span):
        raise ValueError(f"axis range too large: [{lo}, {hi}]")
    step = _nice_step(span, n)
    a = math.floor(lo / step + 1e-9)
    b = math.ceil(hi / step - 1e-9)
    ticks = [(a + i) * step for i in range(b - a + 1)]
    return ticks[0], ticks[-1], ticks


def _decimals(step: float) -> int:
    d = max(0, -math.floor(math.log10(step) + 1e-9))
    if round(step / 10.0 ** math.floor(math.log10(step) + 1e-9), 6) == 2.5:
        d += 1
    return d


def _tick_label(t: float, step: float) -> str:
    if max(abs(t), step) >= 1e6 or step < 1e-5:
        s = f"{t:.3g}"
    else:
        s = f"{t:.{_decimals(step)}f}"
        if "." in s:
            s = s.rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _percent_tick_label(t: float, step: float) -> str:
    s = f"{t * 100:.{_decimals(step * 100)}f}"
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return ("0" if s == "-0" else s) + "%"


# --------------------------------------------------------------------------------------- svg


def _n(v: float) -> str:
    """An SVG coordinate: finite, two decimals at most."""
    if not math.isfinite(v):
        raise ValueError(f"non-finite SVG coordinate {v}")
    s = f"{v:.2f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def _text_w(s: str, size: float = _FONT) -> float:
    return len(s) * size * _CHAR_W


def _clip_label(s: str, max_chars: int = 40) -> str:
    return s if len(s) <= max_chars else s[: max_chars - 1] + "…"


def _text(
    x: float,
    y: float,
    s: str,
    *,
    anchor: str = "start",
    size: int = _FONT,
    fill: str = _INK,
    extra: str = "",
) -> str:
    return (
        f'<text x="{_n(x)}" y="{_n(y)}" font-size="{size}" fill="{fill}" '
        f'text-anchor="{anchor}"{extra}>{_esc(s)}</text>'
    )


def _line(x1: float, y1: float, x2: float, y2: float, stroke: str, extra: str = "") -> str:
    return (
        f'<line x1="{_n(x1)}" y1="{_n(y1)}" x2="{_n(x2)}" y2="{_n(y2)}" stroke="{stroke}"{extra}/>'
    )


def _marker(kind: str, x: float, y: float, color: str, r: float = 4.0) -> str:
    style = f'fill="{color}" stroke="#ffffff" stroke-width="1"'
    if kind == "circle":
        return f'<circle cx="{_n(x)}" cy="{_n(y)}" r="{_n(r)}" {style}/>'
    if kind == "square":
        s = r * 0.9
        xy = f'x="{_n(x - s)}" y="{_n(y - s)}"'
        return f'<rect {xy} width="{_n(2 * s)}" height="{_n(2 * s)}" {style}/>'
    if kind == "cross":
        s = r * 0.9
        return (
            f'<path d="M{_n(x - s)} {_n(y - s)}L{_n(x + s)} {_n(y + s)}M{_n(x - s)} {_n(y + s)}'
            f'L{_n(x + s)} {_n(y - s)}" stroke="{color}" stroke-width="2.5" fill="none"/>'
        )
    r *= 1.2
    if kind == "triangle":
        pts = [(x, y - r), (x + r * 0.87, y + r * 0.5), (x - r * 0.87, y + r * 0.5)]
    elif kind == "triangle_down":
        pts = [(x, y + r), (x + r * 0.87, y - r * 0.5), (x - r * 0.87, y - r * 0.5)]
    else:  # diamond
        pts = [(x, y - r), (x + r * 0.8, y), (x, y + r), (x - r * 0.8, y)]
    return f'<polygon points="{" ".join(f"{_n(a)},{_n(b)}" for a, b in pts)}" {style}/>'


def _svg_open(width: float, height: float, title: str) -> list[str]:
    return [
        f'<svg class="plot" width="{_n(width)}" height="{_n(height)}" '
        f'viewBox="0 0 {_n(width)} {_n(height)}" role="img" aria-label="{_esc(title)}">',
        f"<title>{_esc(title)}</title>",
        f'<rect x="0" y="0" width="{_n(width)}" height="{_n(height)}" fill="#ffffff"/>',
    ]


def _y_axis(
    out: list[str],
    ticks: list[float],
    labels: list[str],
    sy: Any,
    left: float,
    right: float,
    y_label: str,
    label_x: float,
    mid_y: float,
) -> None:
    for t, lab in zip(ticks, labels, strict=True):
        y = sy(t)
        out.append(_line(left, y, right, y, _GRID))
        out.append(_line(left - 5, y, left, y, _AXIS))
        out.append(_text(left - 8, y + 4, lab, anchor="end"))
    if y_label:
        out.append(
            _text(
                label_x,
                mid_y,
                _clip_label(y_label, 60),
                anchor="middle",
                extra=f' transform="rotate(-90 {_n(label_x)} {_n(mid_y)})"',
            )
        )


def _svg_line_plot(p: LinePlot) -> str:
    series: list[tuple[str, list[list[tuple[float, float]]]]] = []
    xs: list[float] = []
    ys: list[float] = []
    for name, pts in p.series.items():
        if isinstance(pts, Mapping):
            pts = list(pts.items())
        segments: list[list[tuple[float, float]]] = []
        cur: list[tuple[float, float]] = []
        for pt in pts:
            x, y = (_finite(pt[0]), _finite(pt[1])) if pt is not None else (None, None)
            if x is None or y is None:
                if cur:
                    segments.append(cur)
                cur = []
                continue
            cur.append((x, y))
            xs.append(x)
            ys.append(y)
        if cur:
            segments.append(cur)
        series.append((str(name), segments))
    have_data = bool(xs)
    x0, x1, xt = nice_ticks(min(xs), max(xs), 6) if have_data else nice_ticks(0.0, 1.0)
    y0, y1, yt = nice_ticks(min(ys), max(ys), 5) if have_data else nice_ticks(0.0, 1.0)
    x_step = xt[1] - xt[0]
    y_step = yt[1] - yt[0]
    x_labels = [_tick_label(t, x_step) for t in xt]
    y_labels = [_tick_label(t, y_step) for t in yt]

    pw, ph = 540.0, 320.0
    y_tick_w = max(_text_w(s) for s in y_labels)
    left = 8 + (_FONT + 8 if p.y_label else 0) + y_tick_w + 10
    # room for the first and last x tick labels, centred on the axis ends
    left = max(left, _text_w(x_labels[0]) / 2 + 4)
    top = 14.0
    bottom = 24 + (_FONT + 12 if p.x_label else 0)
    names = [_clip_label(n) for n, _ in series]
    legend_w = (16 + 28 + 6 + max(_text_w(n) for n in names) + 8) if names else 16.0
    legend_w = max(legend_w, _text_w(x_labels[-1]) / 2 + 4)
    legend_h = 14 + 20 * len(names)
    width = left + pw + legend_w
    height = max(top + ph + bottom, top + legend_h)

    def sx(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * pw

    def sy(y: float) -> float:
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = _svg_open(width, height, p.title)
    for t, lab in zip(xt, x_labels, strict=True):
        x = sx(t)
        out.append(_line(x, top, x, top + ph, _GRID))
        out.append(_line(x, top + ph, x, top + ph + 5, _AXIS))
        out.append(_text(x, top + ph + 19, lab, anchor="middle"))
    _y_axis(out, yt, y_labels, sy, left, left + pw, p.y_label, 8 + _FONT / 2 + 2, top + ph / 2)
    if p.x_label:
        out.append(
            _text(
                left + pw / 2,
                top + ph + 24 + _FONT + 6,
                _clip_label(p.x_label, 80),
                anchor="middle",
            )
        )
    out.append(
        f'<path d="M{_n(left)} {_n(top)}V{_n(top + ph)}H{_n(left + pw)}" fill="none" '
        f'stroke="{_AXIS}" stroke-width="1.2"/>'
    )
    if not have_data:
        out.append(
            _text(
                left + pw / 2,
                top + ph / 2,
                "no finite data points",
                anchor="middle",
                fill="#888888",
            )
        )
    for i, (name, segments) in enumerate(series):
        color, marker = PALETTE[i % len(PALETTE)], _MARKERS[i % len(_MARKERS)]
        out.append(f'<g class="series"><title>{_esc(name)}</title>')
        for seg in segments:
            if len(seg) > 1:
                pts = " ".join(f"{_n(sx(x))},{_n(sy(y))}" for x, y in seg)
                out.append(
                    f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2" '
                    'stroke-linejoin="round" stroke-linecap="round"/>'
                )
        for seg in segments:
            out.extend(_marker(marker, sx(x), sy(y), color) for x, y in seg)
        out.append("</g>")
    lx = left + pw + 16
    for i, name in enumerate(names):
        color, marker = PALETTE[i % len(PALETTE)], _MARKERS[i % len(_MARKERS)]
        y = top + 10 + 20 * i
        out.append(_line(lx, y, lx + 28, y, color, ' stroke-width="2"'))
        out.append(_marker(marker, lx + 14, y, color))
        out.append(_text(lx + 34, y + 4, name))
    out.append("</svg>")
    return "\n".join(out)


def _svg_bar_plot(p: BarPlot) -> str:
    groups: list[list[float | None]] = [[_finite(v) for v in p.values]]
    if p.values_b is not None:
        groups.append([_finite(v) for v in p.values_b])
    finite = [v for g in groups for v in g if v is not None]
    percent = "%" in p.value_format
    if p.y_max is not None and _finite(p.y_max) is not None:
        hi = float(p.y_max)
    elif percent and finite and all(0.0 <= v <= 1.0 for v in finite):
        hi = 1.0
    else:
        hi = max([0.0, *finite])
    lo = min([0.0, *finite])
    if hi <= lo:
        hi = lo + 1.0
    y0, y1, yt = nice_ticks(lo, hi, 5)
    y_step = yt[1] - yt[0]
    y_labels = [(_percent_tick_label if percent else _tick_label)(t, y_step) for t in yt]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else p.value_format.format(v)

    value_texts = [[fmt(v) for v in g] for g in groups]
    vsize = 11
    bar_w = max(26.0, max((_text_w(s, vsize) for g in value_texts for s in g), default=0) + 6)
    n_series = len(groups)
    group_w = n_series * bar_w + (n_series - 1) * 3
    labels = [_clip_label(str(s), 32) for s in p.labels]
    label_w = max((_text_w(s) for s in labels), default=0.0)
    # wide enough for the bars, and for horizontal category labels up to ~16 characters
    slot = max(group_w + 22, min(label_w + 14, 130.0))
    n = max(len(labels), 1)
    pw = max(320.0, n * slot)
    slot = pw / n
    rotate = label_w > slot - 6
    angle = 35.0
    label_h = label_w * math.sin(math.radians(angle)) + _FONT + 4 if rotate else _FONT + 6
    y_tick_w = max(_text_w(s) for s in y_labels)
    left = 8 + (_FONT + 8 if p.y_label else 0) + y_tick_w + 10
    if rotate:  # the first label extends left of its slot
        left = max(left, label_w * math.cos(math.radians(angle)) - slot / 2 + 8)
    legend = n_series > 1 or bool(p.label_a)
    top = (30.0 if legend else 8.0) + vsize + 8
    ph = 280.0
    bottom = 10 + label_h + 8
    width = left + pw + 16
    height = top + ph + bottom

    def sy(y: float) -> float:
        y = min(max(y, y0), y1)  # bars past an explicit y_max are cut at the top
        return top + ph - (y - y0) / (y1 - y0) * ph

    out = _svg_open(width, height, p.title)
    _y_axis(out, yt, y_labels, sy, left, left + pw, p.y_label, 8 + _FONT / 2 + 2, top + ph / 2)
    base = sy(0.0)
    colors = (PALETTE[0], PALETTE[1])
    for i, lab in enumerate(labels):
        cx = left + slot * (i + 0.5)
        gx = cx - group_w / 2
        for j, g in enumerate(groups):
            v = g[i]
            bx = gx + j * (bar_w + 3)
            if v is not None:
                top_y, bot_y = sorted((sy(v), base))
                out.append(
                    f'<rect x="{_n(bx)}" y="{_n(top_y)}" width="{_n(bar_w)}" '
                    f'height="{_n(max(bot_y - top_y, 0.0))}" fill="{colors[j]}" '
                    f'shape-rendering="crispEdges"><title>{_esc(lab)}: {_esc(value_texts[j][i])}'
                    "</title></rect>"
                )
                ty = top_y - 4 if v >= 0 else bot_y + vsize + 2
            else:
                ty = base - 4
            out.append(
                _text(
                    bx + bar_w / 2,
                    ty,
                    value_texts[j][i],
                    anchor="middle",
                    size=vsize,
                    fill="#888888" if v is None else _INK,
                )
            )
        ly = top + ph + 10 + _FONT
        if rotate:
            out.append(
                _text(
                    cx + 4,
                    ly,
                    lab,
                    anchor="end",
                    extra=f' transform="rotate(-{angle:g} {_n(cx + 4)} {_n(ly)})"',
                )
            )
        else:
            out.append(_text(cx, ly, lab, anchor="middle"))
    out.append(_line(left, base, left + pw, base, _AXIS, ' stroke-width="1.2"'))
    out.append(_line(left, top, left, top + ph, _AXIS, ' stroke-width="1.2"'))
    if legend:
        names = [p.label_a or "a", p.label_b or "b"][:n_series]
        x = left
        for j, name in enumerate(names):
            name = _clip_label(name)
            out.append(
                f'<rect x="{_n(x)}" y="6" width="14" height="14" fill="{colors[j]}" '
                'shape-rendering="crispEdges"/>'
            )
            out.append(_text(x + 20, 17, name))
            x += 20 + _text_w(name) + 20
    out.append("</svg>")
    return "\n".join(out)


# -------------------------------------------------------------------------------------- html

_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #fff; color: #222;
  font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 1.6rem; margin: 0 0 8px; }
h2 { font-size: 1.15rem; margin: 32px 0 12px; padding-bottom: 4px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.92rem; }
th, td { text-align: left; padding: 4px 18px 4px 0; border-bottom: 1px solid #eee;
  vertical-align: top; }
th { color: #555; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0; }
figcaption { color: #555; font-size: 0.9rem; margin-top: 6px; }
img.pixelated { display: block; max-width: 100%; height: auto; image-rendering: pixelated;
  border: 1px solid #ddd; box-sizing: content-box; }
svg.plot { display: block; max-width: 100%; height: auto; }
.text { white-space: pre-wrap; line-height: 1.45; margin: 0; }
footer { margin-top: 40px; padding-top: 8px; border-top: 1px solid #ddd; color: #666;
  font-size: 0.8rem; }
footer table { font-size: 0.8rem; }
footer td { word-break: break-all; }
footer td:first-child { word-break: normal; white-space: nowrap; }
"""

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def _html_table(rows: Sequence[tuple[str, Any]], headers: tuple[str, str] | None) -> str:
    out = ["<table>"]
    if headers:
        out.append(
            f"<thead><tr><th>{_esc(headers[0])}</th><th>{_esc(headers[1])}</th></tr></thead>"
        )
    out.append("<tbody>")
    for k, v in rows:
        cls = ' class="num"' if _is_number(v) else ""
        out.append(f"<tr><td>{_esc(k)}</td><td{cls}>{_esc(format_value(v))}</td></tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _caption(text: str) -> str:
    return f"<figcaption>{_esc(text)}</figcaption>" if text else ""


def _html_image(s: Image) -> str:
    data = _image_png(s.png)
    with PILImage.open(io.BytesIO(data)) as im:
        w, h = im.size
    scale = s.scale if s.scale is not None else max(1, min(8, 720 // max(w, 1)))
    if scale < 1:
        raise ValueError(f"image scale must be >= 1, got {scale}")
    b64 = base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{b64}" class="pixelated" '
        f'width="{w * scale}" height="{h * scale}" alt="{_esc(s.caption or s.title)}">'
        f"{_caption(s.caption)}</figure>"
    )


def _section_body(s: Section) -> str:
    if isinstance(s, Table):
        return _html_table(s.rows, s.headers)
    if isinstance(s, Image):
        return _html_image(s)
    if isinstance(s, LinePlot):
        return f"<figure>{_svg_line_plot(s)}{_caption(s.caption)}</figure>"
    if isinstance(s, BarPlot):
        return f"<figure>{_svg_bar_plot(s)}{_caption(s.caption)}</figure>"
    if isinstance(s, Text):
        return f'<p class="text">{_esc(s.body)}</p>'
    raise TypeError(f"not a report section: {type(s).__name__}")


def render_report(
    *,
    title: str,
    sections: Sequence[Section],
    provenance: Mapping[str, Any] | None = None,
) -> str:
    """The report as one self-contained HTML document."""
    from tessera import __version__

    body = [f"<h1>{_esc(title)}</h1>"]
    for i, s in enumerate(sections):
        inner = _section_body(s)
        body.append(f'<section id="s{i + 1}"><h2>{_esc(s.title)}</h2>{inner}</section>')
    footer = ["<footer>"]
    if provenance:
        footer.append("<h3>Provenance</h3>")
        footer.append(_html_table([(str(k), v) for k, v in provenance.items()], None))
    footer.append(f"<p>Generated by tessera {_esc(__version__)}.</p></footer>")
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{_esc(title)}</title>",
            f"<style>{_CSS}</style>",
            "</head>",
            "<body><main>",
            *body,
            *footer,
            "</main></body>",
            "</html>",
            "",
        ]
    )


def write_report(
    path: str | os.PathLike,
    *,
    title: str,
    sections: Sequence[Section],
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Render and write the report atomically (a temporary file in the same directory, then
    ``os.replace``): readers see the old file or the complete new one, never a partial one."""
    text = render_report(title=title, sections=sections, provenance=provenance)
    return atomic_write_text(path, text)

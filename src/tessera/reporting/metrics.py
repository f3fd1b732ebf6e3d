"""The output of one ``tessera eval`` command: ``metrics.json`` and a self-contained
``report.html`` (a table of the scalar metrics, then plots and sample grids).

Sample grids take images of any size mix: every tile is resized to the largest one's size
(``resize_uint8``) before the grid is drawn, so a set scored at its own sizes still shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tessera._version import __version__
from tessera.data.images import grid_png, resize_uint8
from tessera.io import atomic_write_json
from tessera.reporting.html import BarPlot, Image, LinePlot, Section, Table, write_report

__all__ = ["blur_plot", "fidelity_plots", "image_grid", "image_grids", "write_metrics_report"]


def write_metrics_report(
    out_dir: str | Path,
    title: str,
    metrics: Mapping[str, Any],
    sections: Sequence[Section] = (),
    *,
    command: str,
) -> tuple[Path, Path]:
    """Write ``out_dir/metrics.json`` (all of ``metrics``) and ``out_dir/report.html`` (its
    scalar entries as a table, then ``sections``; ``command`` goes in the provenance).
    Returns the two paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = atomic_write_json(out / "metrics.json", dict(metrics))
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str)) or v is None}
    report_path = out / "report.html"
    write_report(
        report_path,
        title=title,
        sections=[Table("Metrics", list(flat.items())), *sections],
        provenance={"tessera": __version__, "command": command},
    )
    return metrics_path, report_path


def image_grid(
    images: Sequence[np.ndarray], title: str, captions: Sequence[str] | None = None
) -> list[Image]:
    """One grid section (up to 8 columns) of uint8 images, tiles resized to the largest image's
    size; the captions are listed, numbered, under it. No images: no section."""
    if not images:
        return []
    size = max((im.shape[:2] for im in images), key=lambda hw: (hw[0] * hw[1], hw))
    tiles = [resize_uint8(im, size) for im in images]
    caption = "; ".join(f"{i}. {c}" for i, c in enumerate(captions or [], 1))
    return [Image(title, grid_png(tiles, ncol=min(8, len(tiles))), caption)]


def image_grids(
    groups: Iterable[tuple[str, Sequence[np.ndarray], Sequence[str] | None]],
) -> list[Image]:
    """:func:`image_grid` of each ``(title, images, captions)`` group, empty ones left out."""
    return [s for title, images, captions in groups for s in image_grid(images, title, captions)]


def blur_plot(title: str, label: str, fid_by_blur_radius: Mapping[str, float]) -> LinePlot:
    """FID against Gaussian blur radius, from a ``{"radius": fid}`` mapping."""
    points = [(float(k), v) for k, v in fid_by_blur_radius.items()]
    return LinePlot(title, "Gaussian blur radius", "FID", {label: points})


def fidelity_plots(metrics: Mapping[str, Any]) -> list[BarPlot]:
    """Strict fidelity and each claim's pass rate: overall, and seen vs held-out pairs."""
    claims = list(metrics["claims_seen"])
    labels = ["strict", *claims]
    seen = [metrics["strict_seen"], *metrics["claims_seen"].values()]
    held = [metrics["strict_held_out"], *metrics["claims_held_out"].values()]
    overall = [metrics[k] for k in labels]
    return [
        BarPlot("Caption fidelity (all prompts)", labels, _nan(overall), y_max=1.0),
        BarPlot(
            "Seen vs held-out colour-shape pairs",
            labels,
            _nan(seen),
            y_max=1.0,
            values_b=_nan(held),
            label_a="seen",
            label_b="held-out",
        ),
    ]


def _nan(values: list) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]

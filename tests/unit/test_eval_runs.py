"""``tessera eval`` runs on image sets of mixed sizes: scored at their own size, shown resized in
the report (issue 14 item 7: the grid writer refused tiles of different sizes)."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tessera.cli.main import main
from tessera.config.shapes import ShapesConfig
from tessera.data.images import grid_png
from tessera.data.shapes import ShapesSource
from tessera.reporting.metrics import image_grid, image_grids


def _mixed_manifest(root: Path, sizes: tuple[int, ...] = (32, 64), n: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for size in sizes:
        src = ShapesSource(ShapesConfig(size=size), split="eval", n=n)
        for i in range(n):
            name = f"{size}_{i}.png"
            Image.fromarray(src.image(i)).save(root / name)
            lines.append(json.dumps({"prompt": src.prompt(i), "file": name}))
    manifest = root / "manifest.jsonl"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return manifest


def _embedded_pngs(report: Path) -> list[Image.Image]:
    b64 = re.findall(r'src="data:image/png;base64,([^"]+)"', report.read_text(encoding="utf-8"))
    return [Image.open(io.BytesIO(base64.b64decode(s))) for s in b64]


def test_fidelity_of_a_manifest_with_mixed_image_sizes(tmp_path, capsys) -> None:
    manifest = _mixed_manifest(tmp_path / "gen")
    out = tmp_path / "eval"
    assert main(["eval", "fidelity", str(manifest), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 6
    assert len((out / "judged.jsonl").read_text().splitlines()) == 6
    printed = capsys.readouterr().out
    assert "over 6 images" in printed and f"wrote {out / 'metrics.json'}" in printed
    grids = _embedded_pngs(out / "report.html")
    assert grids  # the Passed and/or Failed grid
    tiles = 0
    for g in grids:  # one row of 64x64 tiles (the largest size), 2 px padding
        assert g.height == 64 + 2 * 2
        assert (g.width - 2) % (64 + 2) == 0
        tiles += (g.width - 2) // (64 + 2)
    assert tiles == 6


def test_grid_writer_still_refuses_mixed_sizes() -> None:
    a, b = np.zeros((32, 32, 3), np.uint8), np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(ValueError, match="expected"):
        grid_png([a, b], ncol=2)


def test_image_grid_resizes_tiles_to_the_largest() -> None:
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
        rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
        rng.integers(0, 256, (48, 40, 3), dtype=np.uint8),
    ]
    [section] = image_grid(images, "Images", ["a", "b", "c"])
    grid = Image.open(io.BytesIO(section.png))
    assert grid.size == (3 * 64 + 4 * 2, 64 + 2 * 2)
    assert section.caption == "1. a; 2. b; 3. c"
    assert image_grid([], "Empty") == []
    sections = image_grids([("A", images[:1], None), ("B", [], None), ("C", images, None)])
    assert [s.title for s in sections] == ["A", "C"]

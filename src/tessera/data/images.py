"""Image helpers shared by every package: float <-> uint8, PNG encoding, the one grid writer,
and loading user image files for the commands (uint8 only at the file boundary).

Library images are float tensors ``(B, 3, H, W)`` in [0, 1]; arrays handed to the writers are
uint8 ``(H, W, 3)`` (``(H, W)`` grey and ``(H, W, 4)`` RGBA also work).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageDraw, ImageFont

__all__ = [
    "IMAGE_SUFFIXES",
    "grid_array",
    "grid_png",
    "load_images",
    "png_bytes",
    "psnr",
    "resize_uint8",
    "save_grid",
    "save_side_by_side",
    "to_uint8",
]


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8 (round half up, clamped)."""
    return (
        (images.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, per row of ``(B, ...)`` tensors in [0, 1] (e.g. images
    ``(B, 3, H, W)``): ``(B,)`` float32, ``inf`` where the two are identical."""
    mse = (a.float().cpu() - b.float().cpu()).square().flatten(1).mean(1)
    return -10.0 * torch.log10(mse)  # log10(0) = -inf: identical rows give inf


def resize_uint8(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 image resized to ``(h, w)``: nearest when enlarging by whole factors (pixels stay
    crisp), bicubic with antialiasing otherwise; unchanged when it already has that size."""
    a = _rgb(image)
    h, w = size
    if a.shape[:2] == (h, w):
        return a
    whole = h % a.shape[0] == 0 and w % a.shape[1] == 0 and h >= a.shape[0]
    method = PILImage.Resampling.NEAREST if whole else PILImage.Resampling.BICUBIC
    return np.asarray(PILImage.fromarray(a).resize((w, h), method))


def _as_image_array(array: Any) -> np.ndarray:
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got dtype {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image array, got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"empty image array of shape {a.shape}")
    return np.ascontiguousarray(a)


def png_bytes(array: Any) -> bytes:
    """PNG encoding of a uint8 image array (HxWx3 RGB; HxW grey and HxWx4 RGBA also work)."""
    buf = io.BytesIO()
    PILImage.fromarray(_as_image_array(array)).save(buf, format="PNG")
    return buf.getvalue()


def _rgb(array: Any) -> np.ndarray:
    a = _as_image_array(array)
    if a.ndim == 2:
        return np.repeat(a[:, :, None], 3, axis=2)
    if a.shape[2] == 4:  # composite onto white
        alpha = a[:, :, 3:4].astype(np.float32) / 255.0
        return np.round(a[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return a


def grid_png(
    images: Sequence[Any],
    ncol: int,
    pad: int = 2,
    captions: Sequence[str] | None = None,
    *,
    row_labels: Sequence[str] | None = None,
    marks: Sequence[bool | None] | None = None,
) -> bytes:
    """PNG of equal-size uint8 tiles laid out row-major in ``ncol`` columns on white, with
    ``pad`` white pixels between tiles and around the edge, and optionally a one-line caption
    under each tile (cut to the tile's width), a label left of each row (wrapped to a
    column of its own) and a pass (green) / fail (red) frame per tile (None: no frame).
    Tiles of different sizes are an error: resize them first (:func:`resize_uint8`)."""
    tiles = [_rgb(im) for im in images]
    if not tiles:
        raise ValueError("grid_png needs at least one image")
    h, w = tiles[0].shape[:2]
    for i, t in enumerate(tiles):
        if t.shape[:2] != (h, w):
            raise ValueError(f"tile {i} is {t.shape[:2]}, expected {(h, w)} like tile 0")
    if ncol < 1:
        raise ValueError(f"ncol must be >= 1, got {ncol}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    if captions is not None and len(captions) != len(tiles):
        raise ValueError(f"{len(tiles)} images but {len(captions)} captions")
    if marks is not None and len(marks) != len(tiles):
        raise ValueError(f"{len(tiles)} images but {len(marks)} marks")
    ncol = min(ncol, len(tiles))
    nrow = -(-len(tiles) // ncol)
    if row_labels is not None and len(row_labels) != nrow:
        raise ValueError(f"{nrow} rows but {len(row_labels)} row labels")
    font = ImageFont.load_default(size=10)
    cap_h = 13 if captions is not None else 0
    cell_h = h + cap_h
    left = 0 if row_labels is None else 160  # the label column, px
    canvas = np.full(
        (nrow * cell_h + (nrow + 1) * pad, left + ncol * w + (ncol + 1) * pad, 3), 255, np.uint8
    )
    edge = max(1, min(h, w) // 24)  # frame width of a pass / fail mark
    for i, t in enumerate(tiles):
        r, c = divmod(i, ncol)
        y, x = pad + r * (cell_h + pad), left + pad + c * (w + pad)
        canvas[y : y + h, x : x + w] = t
        mark = None if marks is None else marks[i]
        if mark is not None:
            color = (30, 150, 60) if mark else (200, 40, 30)
            for sl in (
                np.s_[y : y + edge, x : x + w],
                np.s_[y + h - edge : y + h, x : x + w],
                np.s_[y : y + h, x : x + edge],
                np.s_[y : y + h, x + w - edge : x + w],
            ):
                canvas[sl] = color
    img = PILImage.fromarray(canvas)
    draw = ImageDraw.Draw(img)
    for r, label in enumerate(row_labels or ()):
        y = pad + r * (cell_h + pad)
        lines = _wrap(draw, str(label), font, left - 2 * pad)
        for k, line in enumerate(lines[: max(1, cell_h // 12)]):
            draw.text((pad, y + 12 * k), line, fill=(20, 20, 20), font=font)
    if captions is not None:
        for i, text in enumerate(captions):
            r, c = divmod(i, ncol)
            y, x = pad + r * (cell_h + pad) + h + 1, left + pad + c * (w + pad)
            text = str(text)
            if draw.textlength(text, font=font) > w:
                while text and draw.textlength(text + "…", font=font) > w:
                    text = text[:-1]
                text = text + "…" if text else ""
            draw.text((x, y), text, fill=(40, 40, 40), font=font)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _wrap(draw: Any, text: str, font: Any, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` px (at word boundaries)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(lines[-1] + " " + word, font=font) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def grid_array(
    rows: Sequence[Sequence[np.ndarray]], *, pad: int = 2, background: int = 200
) -> np.ndarray:
    """uint8 ``(H, W, 3)`` canvas with one row of tiles per entry of ``rows`` (rows may differ
    in length; empty cells show the background). Every tile must have the first tile's size."""
    tiles = [_rgb(t) for row in rows for t in row]
    if not tiles:
        raise ValueError("grid_array needs at least one image")
    h, w = tiles[0].shape[:2]
    n_cols = max(len(r) for r in rows)
    grid = np.full((len(rows) * (h + pad) + pad, n_cols * (w + pad) + pad, 3), background, np.uint8)
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            t = _rgb(img)
            if t.shape[:2] != (h, w):
                raise ValueError(f"tile ({r}, {c}) is {t.shape[:2]}, expected {(h, w)}")
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = t
    return grid


def save_grid(pixels: np.ndarray, prompt_index: Sequence[int], path: Path, pad: int = 2) -> None:
    """Grid PNG of uint8 images ``(N, H, W, 3)``: one row per prompt, in prompt order."""
    rows: dict[int, list[np.ndarray]] = {}
    for img, p in zip(pixels, prompt_index):
        rows.setdefault(p, []).append(img)
    grid = grid_array([rows[k] for k in sorted(rows)], pad=pad)
    PILImage.fromarray(grid).save(path)


def save_side_by_side(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: Path, *, cols: int = 8
) -> Path:
    """Grid of (original, reconstruction) pairs, ``cols`` pairs per row, as a PNG."""
    a, b = to_uint8(originals), to_uint8(reconstructions)
    pairs = [t for i in range(len(a)) for t in (a[i], b[i])]
    rows = [pairs[i : i + 2 * cols] for i in range(0, len(pairs), 2 * cols)]
    PILImage.fromarray(grid_array(rows)).save(path)
    return path


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def load_images(paths: list[str], size: int) -> tuple[list[str], torch.Tensor]:
    """Files (or folders, searched recursively) -> (names, (N, 3, size, size) in [0, 1]).

    Decoding goes through :func:`tessera.data.load_image`; images that cannot be decoded
    are skipped with a one-line warning; none at all is a :class:`DataError`.
    """
    import logging

    from tessera.data.image_io import load_image
    from tessera.data.transforms import center_crop, resize_shorter, to_tensor
    from tessera.errors import DataError

    log = logging.getLogger("tessera.vae")
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            files.append(p)
        else:
            raise DataError(f"no such image or folder: {p}")
    names, tensors = [], []
    for f in files:
        try:
            img = load_image(f)
        except DataError as e:
            log.warning("skipping %s: %s", f, e)
            continue
        names.append(str(f))
        tensors.append(to_tensor(center_crop(resize_shorter(img, size), size)))
    if not tensors:
        raise DataError(f"no readable images among {len(files)} file(s)")
    return names, torch.stack(tensors)

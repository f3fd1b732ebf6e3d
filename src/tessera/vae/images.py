"""Image I/O helpers of the dVAE commands (uint8 only at the file boundary)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) float in [0, 1] -> (B, H, W, 3) uint8 (round half up, clamped)."""
    return (
        (images.float().clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    )


def save_side_by_side(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: Path, *, cols: int = 8
) -> Path:
    """Grid of (original | reconstruction) pairs, ``cols`` pairs per row, as a PNG."""
    a, b = to_uint8(originals), to_uint8(reconstructions)
    n, h, w, _ = a.shape
    rows = (n + cols - 1) // cols
    pad = 2
    grid = np.full((rows * (h + pad) + pad, cols * (2 * w + 2 * pad) + pad, 3), 200, np.uint8)
    for i in range(n):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (2 * w + 2 * pad)
        grid[y : y + h, x : x + w] = a[i]
        grid[y : y + h, x + w + 1 : x + 2 * w + 1] = b[i]
    Image.fromarray(grid).save(path)
    return path


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif"}


def load_images(paths: list[str], size: int) -> tuple[list[str], torch.Tensor]:
    """Files (or folders, searched recursively) -> (names, (N, 3, size, size) in [0, 1]).

    Decoding goes through :func:`tessera.data.load_image`; images that cannot be decoded
    are skipped with a one-line warning; none at all is a :class:`DataError`.
    """
    import logging

    from tessera.data import load_image
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

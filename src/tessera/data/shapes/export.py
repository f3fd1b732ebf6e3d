"""Write ``shapes`` examples to disk: a folder of PNG + TXT pairs, or webdataset tar shards.

Output is byte-identical across runs: PNGs carry no metadata and a fixed zlib level, tar
members have fixed mtime/uid/gid/mode, JSON keys are sorted.
"""

from __future__ import annotations

import dataclasses
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from tessera.config.shapes import ShapesConfig
from tessera.data.shapes.dataset import ShapesSource, example_key
from tessera.data.shapes.render import render_scene
from tessera.errors import ConfigError, DataError
from tessera.io import atomic_file

__all__ = ["ExportSummary", "encode_png", "export_shapes"]

_PNG_LEVEL = 6


@dataclasses.dataclass(frozen=True, slots=True)
class ExportSummary:
    """What :func:`export_shapes` wrote: ``files`` paths in total (``shards`` tars, if any)."""

    out_dir: Path
    format: str
    split: str
    n: int
    size: int
    seed: int
    files: int
    shards: int


def encode_png(pixels: np.ndarray) -> bytes:
    """Deterministic PNG bytes of a uint8 (H, W, 3) image (no metadata, zlib level 6)."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=_PNG_LEVEL)
    return buf.getvalue()


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def export_shapes(
    out_dir: str | Path,
    *,
    n: int,
    split: str = "train",
    size: int | None = None,
    seed: int | None = None,
    format: Literal["folder", "webdataset"] = "folder",
    shard_size: int = 1000,
    start: int = 0,
    config: ShapesConfig | None = None,
    progress: Callable[[int], None] | None = None,
) -> ExportSummary:
    """Write examples ``start .. start + n - 1`` of ``split`` under ``out_dir``.

    folder: ``NNNNNN.png`` + ``NNNNNN.txt`` (one caption per line), named by example index.
    webdataset: tars ``shapes-{split}-{k:05d}.tar`` of ``shard_size`` examples, members
      ``NNNNNN.png``, ``NNNNNN.txt`` and ``NNNNNN.json`` (scene metadata and captions).
    size / seed: override ``config`` (default ``ShapesConfig()``: 64 px, seed 0).
    progress: called with the number of examples just written (e.g. ``tqdm.update``).
    """
    base = config if config is not None else ShapesConfig()
    changes = {k: v for k, v in (("size", size), ("seed", seed)) if v is not None}
    cfg = base.replace(**changes) if changes else base
    if n < 1:
        raise ConfigError(f"shapes export: n must be >= 1, got {n}")
    if format not in ("folder", "webdataset"):
        raise ConfigError(f"shapes export: unknown format {format!r}; choose folder or webdataset")
    if shard_size < 1:
        raise ConfigError(f"shapes export: shard_size must be >= 1, got {shard_size}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise DataError(f"shapes export: {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    source = ShapesSource(cfg, split=split, n=n, start=start)

    def members(i: int) -> tuple[str, bytes, bytes, bytes]:
        scene = source.scene(i)
        captions = source.scene_captions(scene)
        png = encode_png(render_scene(scene, supersample=cfg.supersample))
        text = ("\n".join(captions) + "\n").encode("utf-8")
        meta = {
            "key": example_key(split, scene.index),
            "captions": list(captions),
            **scene.to_dict(),
        }
        return f"{scene.index:06d}", png, text, json.dumps(meta, sort_keys=True).encode("utf-8")

    files = shards = 0
    if format == "folder":
        for i in range(n):
            stem, png, text, _ = members(i)
            (out / f"{stem}.png").write_bytes(png)
            (out / f"{stem}.txt").write_bytes(text)
            files += 2
            if progress is not None:
                progress(1)
    else:
        for k, lo in enumerate(range(0, n, shard_size)):
            path = out / f"shapes-{split}-{k:05d}.tar"
            # a shard appears only once complete
            with (
                atomic_file(path) as tmp,
                tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar,
            ):
                for i in range(lo, min(lo + shard_size, n)):
                    stem, png, text, meta = members(i)
                    _tar_add(tar, f"{stem}.png", png)
                    _tar_add(tar, f"{stem}.txt", text)
                    _tar_add(tar, f"{stem}.json", meta)
                    if progress is not None:
                        progress(1)
            files += 1
            shards += 1
    return ExportSummary(
        out_dir=out,
        format=format,
        split=split,
        n=n,
        size=cfg.size,
        seed=cfg.seed,
        files=files,
        shards=shards,
    )

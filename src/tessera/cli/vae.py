"""``tessera vae train | encode | reconstruct``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from tessera.cli.train_common import add_train_command


def register(subparsers: argparse._SubParsersAction) -> None:
    add_train_command(subparsers, "vae")
    for name, help_text in (
        ("encode", "images -> token grids (.npy)"),
        ("reconstruct", "images -> side-by-side PNG of originals and reconstructions + PSNR"),
    ):
        p = subparsers.add_parser(name, help=help_text, description=help_text)
        p.add_argument("model", help="dVAE checkpoint directory (e.g. RUN_DIR/final)")
        p.add_argument("images", nargs="+", help="image files or folders of images")
        p.add_argument("--out", required=True, help="output directory")
        p.add_argument("--batch-size", type=int, default=32, help="images per batch")
        p.set_defaults(func=_encode if name == "encode" else _reconstruct)


def _load(args: argparse.Namespace):
    import torch

    from tessera import checkpoint
    from tessera.data.images import load_images

    model = checkpoint.load(args.model, kind="vae").eval()
    files, images = load_images(args.images, model.config.image_size)
    return torch, model, files, images


def _encode(args: argparse.Namespace) -> int:
    import numpy as np

    torch, model, files, images = _load(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokens = torch.cat([model.encode(b) for b in images.split(args.batch_size)])
    dtype = np.int16 if model.config.vocab_size <= 32767 else np.int32
    np.save(out / "tokens.npy", tokens.numpy().astype(dtype))
    (out / "files.txt").write_text("".join(f"{f}\n" for f in files), encoding="utf-8")
    print(f"encoded {len(files)} images to {out / 'tokens.npy'} {tuple(tokens.shape)}")
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from tessera.data.images import psnr, save_side_by_side

    torch, model, files, images = _load(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recs = torch.cat([model.decode(model.encode(b)) for b in images.split(args.batch_size)])
    values = psnr(recs, images).tolist()
    save_side_by_side(images, recs, out / "reconstructions.png")
    report = {"mean_psnr_db": sum(values) / len(values), "psnr_db": dict(zip(files, values))}
    (out / "psnr.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"{len(files)} images, mean PSNR {report['mean_psnr_db']:.2f} dB -> {out}")
    return 0

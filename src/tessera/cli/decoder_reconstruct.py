"""``tessera decoder reconstruct``: CLIP-encode images, DDIM-invert them under the decoder,
decode with eta = 0; side-by-side PNGs and PSNR (unCLIP §3's bipartite latent round trip)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "reconstruct",
        help="invert images with DDIM and decode them again (PSNR, side-by-side PNGs)",
        description=(
            "Each image is embedded by CLIP (z_i), inverted to x_T by DDIM under the decoder "
            "conditioned on z_i, and decoded again with eta = 0. Writes one PNG per image, "
            "side_by_side.png (input, reconstruction) and reconstruct.json (PSNR in dB)."
        ),
    )
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--decoder", required=True, help="decoder checkpoint (RUN_DIR/final)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--clip", help="CLIP checkpoint (default: the shipped shapes CLIP)")
    p.add_argument("--tokenizer", help="tokenizer (default: the decoder checkpoint's)")
    p.add_argument(
        "--caption", action="append", help="caption of each image, in order (repeat per image)"
    )
    p.add_argument("--steps", type=int, default=50, help="DDIM steps each way (default 50)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch")
    p.set_defaults(func=_reconstruct)


def _reconstruct(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tessera.checkpoint import load, load_checkpoint, shipped_dir
    from tessera.data.images import load_images, png_bytes, save_side_by_side, to_uint8
    from tessera.errors import ConfigError
    from tessera.pipelines.manipulations import reconstruct

    if args.steps < 2 or args.batch_size < 1:
        raise ConfigError("--steps must be >= 2 and --batch-size >= 1")
    loaded = load_checkpoint(args.decoder, kind="decoder")
    decoder = loaded.obj.eval()
    clip = load(args.clip or shipped_dir("pipeline", "clip"), kind="clip").eval()
    if clip.config.embed_dim != decoder.config.clip_dim:
        raise ConfigError(
            f"the CLIP's embed_dim {clip.config.embed_dim} != the decoder's clip_dim "
            f"{decoder.config.clip_dim}: pass the --clip the decoder was trained with"
        )
    names, images = load_images(args.images, decoder.config.image_size)
    if args.caption is not None and len(args.caption) != len(names):
        raise ConfigError(f"{len(args.caption)} --caption for {len(names)} images")
    tokenizer = None
    if args.caption is not None:
        tokenizer = load(args.tokenizer, kind="tokenizer") if args.tokenizer else loaded.tokenizer
        if tokenizer is None:
            raise ConfigError(f"{args.decoder} has no tokenizer: pass --tokenizer DIR")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    recons, records = [], []
    for lo in range(0, len(names), args.batch_size):
        hi = lo + args.batch_size
        caps = None if args.caption is None else args.caption[lo:hi]
        r = reconstruct(
            decoder, clip, images[lo:hi], tokenizer=tokenizer, captions=caps, steps=args.steps
        )
        recons.append(r.images)
        for i, (name, value) in enumerate(zip(names[lo:hi], r.psnr, strict=True)):
            png = out / f"{lo + i:04d}_{Path(name).stem}.png"
            png.write_bytes(png_bytes(to_uint8(r.images[i : i + 1])[0]))
            records.append({"image": name, "reconstruction": png.name, "psnr": round(value, 3)})
    import torch

    save_side_by_side(images, torch.cat(recons), out / "side_by_side.png")
    mean = sum(r["psnr"] for r in records) / len(records)
    summary = {"steps": args.steps, "mean_psnr": round(mean, 3), "images": records}
    (out / "reconstruct.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    for r in records:
        print(f"{r['psnr']:7.2f} dB\t{r['image']}")
    print(f"mean PSNR {mean:.2f} dB over {len(records)} images -> {out}")
    return 0

"""``tessera vqgan train | convert``."""

from __future__ import annotations

import argparse

from tessera.cli.train_common import add_train_command


def register(subparsers: argparse._SubParsersAction) -> None:
    add_train_command(subparsers, "vqgan")
    help_text = "convert taming-transformers or diffusers VQModel weights into a tessera VQGAN"
    p = subparsers.add_parser(
        "convert",
        help=help_text,
        description=(
            help_text + ". SRC is a diffusers VQModel folder (config.json + .safetensors) or a "
            "taming state dict (.safetensors, or a weights-only .ckpt/.pt; pickled objects are "
            "refused). The architecture is read off the tensor shapes."
        ),
    )
    p.add_argument("src", help="diffusers VQModel folder or taming weights file")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--image-size", type=int, help="image side in pixels (taming default: 256)")
    p.add_argument("--norm-groups", type=int, help="GroupNorm groups (taming default: 32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tessera import checkpoint
    from tessera.convert.vqgan import load_vqgan
    from tessera.errors import CheckpointError

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CheckpointError(f"{out} already exists (pass --overwrite to replace it)")
    model = load_vqgan(args.src, image_size=args.image_size, norm_groups=args.norm_groups)
    checkpoint.save(
        out, config=model.config, model=model, metadata={"source": str(args.src)}, overwrite=True
    )
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    print(
        f"converted VQGAN ({cfg.quantizer}, {cfg.image_size} px -> {cfg.grid_size}x"
        f"{cfg.grid_size} of {cfg.vocab_size} codes, {n / 1e6:.1f}M parameters) -> {out}"
    )
    return 0

"""``tessera convert rudalle``: Sber's ruDALL-E weights -> a tessera DALL·E pipeline folder."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "convert ruDALL-E (transformer, VQGAN, YouTokenToMe BPE) into a pipeline folder"
    p = subparsers.add_parser(
        "rudalle",
        help=help_text,
        description=(
            help_text + ". SRC is a folder holding the released files under their names "
            "(pytorch_model_v3.bin, vqgan.gumbelf8-sber.model.ckpt, bpe.model; .safetensors "
            "forms too); --transformer / --vqgan / --bpe name them one by one. Only "
            "safetensors and tensors-only torch.save files are read: anything pickled is "
            "refused with the one-time command that makes a .safetensors of it. See "
            "docs/rudalle.md."
        ),
    )
    p.add_argument("src", nargs="?", help="folder with the released files")
    p.add_argument("--out", required=True, help="pipeline folder to write")
    p.add_argument("--transformer", help="the transformer's state dict file")
    p.add_argument("--vqgan", help="the VQGAN's state dict file (taming GumbelVQ)")
    p.add_argument("--bpe", help="the YouTokenToMe bpe.model file")
    p.add_argument(
        "--heads", type=int, default=16, help="attention heads (not in the weights; Malevich 16)"
    )
    p.add_argument(
        "--image-size", type=int, default=256, help="the VQGAN's image side (default: 256)"
    )
    p.add_argument("--fp16", action="store_true", help="store the weights as float16")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tessera.convert.rudalle import convert_rudalle
    from tessera.errors import CheckpointError

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CheckpointError(f"{out} already exists (pass --overwrite to replace it)")
    convert_rudalle(
        args.src,
        out,
        transformer=args.transformer,
        vqgan=args.vqgan,
        bpe=args.bpe,
        n_heads=args.heads,
        image_size=args.image_size,
        dtype="float16" if args.fp16 else None,
    )
    print(f"ruDALL-E pipeline folder -> {out} (tessera generate PROMPT --model {out})")
    return 0

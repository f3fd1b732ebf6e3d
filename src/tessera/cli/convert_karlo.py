"""``tessera convert karlo``: kakaobrain's Karlo (diffusers layout) -> a tessera unCLIP folder."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "convert Karlo (unCLIP, diffusers folder layout) into a pipeline folder"
    p = subparsers.add_parser(
        "karlo",
        help=help_text,
        description=(
            help_text + ". SRC is the diffusers UnCLIPPipeline folder (model_index.json, "
            "prior/, decoder/, text_proj/, super_res_first/, super_res_last/, text_encoder/, "
            "tokenizer/, the three scheduler folders). Karlo ships no image tower: --clip "
            "names the CLIP it was trained with (OpenAI's ViT-L/14: a transformers CLIPModel "
            "or CLIPVisionModelWithProjection folder). Only safetensors or tensors-only files "
            "are read. See docs/weights.md."
        ),
    )
    p.add_argument("src", help="diffusers Karlo folder")
    p.add_argument("--clip", required=True, help="transformers CLIP folder for the image tower")
    p.add_argument("--out", required=True, help="pipeline folder to write")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    import shutil
    from pathlib import Path

    from tessera.convert.karlo import convert_karlo
    from tessera.errors import CheckpointError

    out = Path(args.out)
    if out.exists():
        if not args.overwrite:
            raise CheckpointError(f"{out} already exists (pass --overwrite to replace it)")
        shutil.rmtree(out)
    convert_karlo(args.src, out, clip=args.clip, dtype="float16" if args.fp16 else None)
    print(f"converted Karlo -> {out} (tessera generate --model {out})")
    return 0

"""``tessera convert clip``: transformers or open_clip CLIP weights -> a tessera CLIP checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "convert a transformers or open_clip CLIP into a tessera CLIP checkpoint"
    p = subparsers.add_parser(
        "clip",
        help=help_text,
        description=(
            help_text + ". SRC is a transformers folder (a CLIPModel, or a "
            "CLIPTextModelWithProjection with --vision naming the image tower's folder) or an "
            "open_clip state dict file (.safetensors or tensors-only; the activation comes "
            "from --open-clip-config or --activation). The tokenizer (OpenAI's BPE) is read "
            "from SRC, a sibling tokenizer/ folder, or --tokenizer. Nothing pickled is read. "
            "See docs/weights.md."
        ),
    )
    p.add_argument("src", help="transformers CLIP folder or open_clip state dict file")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--vision", help="transformers image tower folder (with a text-only SRC)")
    p.add_argument(
        "--tokenizer",
        help="tokenizer: a transformers CLIP tokenizer folder, or open_clip's "
        "bpe_simple_vocab_16e6.txt.gz",
    )
    p.add_argument("--open-clip-config", help="open_clip model config JSON (heads, activation)")
    p.add_argument(
        "--activation",
        choices=("quick_gelu", "gelu"),
        help="open_clip: QuickGELU (OpenAI's weights) or GELU (LAION's)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tessera.convert.clip import convert_hf_clip, convert_open_clip, save_clip
    from tessera.errors import CheckpointError

    src, out = Path(args.src), Path(args.out)
    if out.exists() and not args.overwrite:
        raise CheckpointError(f"{out} already exists (pass --overwrite to replace it)")
    if src.is_dir():
        model, tok = convert_hf_clip(src, vision=args.vision, tokenizer=args.tokenizer)
        source = "transformers CLIP (converted)"
    else:
        if args.tokenizer is None:
            raise CheckpointError(
                "an open_clip state dict needs --tokenizer (a transformers CLIP tokenizer "
                "folder or open_clip's bpe_simple_vocab_16e6.txt.gz)"
            )
        model, tok = convert_open_clip(
            src, tokenizer=args.tokenizer, config=args.open_clip_config, activation=args.activation
        )
        source = "open_clip CLIP (converted)"
    save_clip(out, model, tok, source=source, overwrite=args.overwrite)
    cfg = model.config
    n = sum(p.numel() for p in model.parameters())
    print(
        f"converted CLIP (ViT {cfg.vision_layers}x{cfg.vision_width} at {cfg.image_size} px, "
        f"text {cfg.text_layers}x{cfg.text_width}, embed {cfg.embed_dim}, "
        f"{n / 1e6:.1f}M parameters) -> {out}"
    )
    return 0

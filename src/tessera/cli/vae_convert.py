"""``tessera vae convert-openai``: OpenAI's released dVAE weights -> a tessera checkpoint."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    help_text = "convert the dall-e package's Encoder/Decoder weights into a tessera checkpoint"
    p = subparsers.add_parser(
        "convert-openai",
        help=help_text,
        description=(
            help_text + ". ENCODER and DECODER are .safetensors files or tensors-only "
            "torch.save'd state dicts. OpenAI's released encoder.pkl/decoder.pkl are pickled "
            "modules and are never unpickled here: the error for them prints the one-time "
            "conversion command to run in an environment you trust."
        ),
    )
    p.add_argument("encoder", help="encoder weights (.safetensors or state-dict .pt)")
    p.add_argument("decoder", help="decoder weights (.safetensors or state-dict .pt)")
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument(
        "--image-size", type=int, default=256, help="image side in pixels (default: 256)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.set_defaults(func=_convert)


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from tessera import checkpoint
    from tessera.errors import CheckpointError
    from tessera.vae.convert import load_openai

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise CheckpointError(f"{out} already exists (pass --overwrite to replace it)")
    model = load_openai(args.encoder, args.decoder, image_size=args.image_size)
    checkpoint.save(
        out,
        config=model.config,
        model=model,
        metadata={"source": "openai dall-e (converted)"},
        overwrite=args.overwrite,
    )
    n = sum(p.numel() for p in model.parameters())
    cfg = model.config
    print(
        f"converted dVAE (n_hid={cfg.n_hid}, {cfg.group_count}x{cfg.n_blk_per_group} blocks, "
        f"vocab {cfg.vocab_size}, {n / 1e6:.1f}M parameters) -> {out}"
    )
    return 0

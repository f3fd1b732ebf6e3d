"""``tessera decoder train | reconstruct | info``."""

from __future__ import annotations

import argparse

from tessera.cli.train_common import add_train_command


def register(subparsers: argparse._SubParsersAction) -> None:
    add_train_command(subparsers, "decoder")
    p = subparsers.add_parser(
        "info",
        help="parameter counts and diffusion config of a decoder preset",
        description=(
            "Print, as JSON, a decoder preset's image size, its parameter counts by part "
            "(UNet, caption transformer, projections, total; counted on the meta device, so "
            "the paper's 3.5B model costs nothing) and its diffusion config; for the paper's "
            "preset also Table 3's size and the relative difference."
        ),
    )
    p.add_argument("--preset", default="tiny", help="decoder preset (default: tiny)")
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    import json

    from tessera.config.presets import preset
    from tessera.models.decoder import PAPER_PARAMETERS, parameter_counts

    cfg = preset("decoder", args.preset)
    counts = parameter_counts(cfg)
    info = {
        "preset": args.preset,
        "image_size": cfg.image_size,
        "parameters": counts,
        "diffusion": cfg.diffusion.to_dict(),
    }
    if args.preset in PAPER_PARAMETERS:
        paper = PAPER_PARAMETERS[args.preset]
        info["paper_parameters"] = paper
        info["relative_difference"] = round(counts["total"] / paper - 1, 4)
    print(json.dumps(info, indent=2))
    return 0

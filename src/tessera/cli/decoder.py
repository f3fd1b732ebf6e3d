"""``tessera decoder train | reconstruct | info``."""

from __future__ import annotations

import argparse

from tessera.cli.train_common import add_train_command, print_preset_info


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
    from tessera.config.presets import preset
    from tessera.models.decoder import PAPER_PARAMETERS, parameter_counts

    cfg = preset("decoder", args.preset)
    return print_preset_info(
        args.preset,
        parameter_counts(cfg),
        PAPER_PARAMETERS,
        image_size=cfg.image_size,
        diffusion=cfg.diffusion.to_dict(),
    )

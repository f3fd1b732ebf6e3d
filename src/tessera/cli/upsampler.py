"""``tessera upsampler train | info``."""

from __future__ import annotations

import argparse

from tessera.cli.train_common import add_train_command, print_preset_info


def register(subparsers: argparse._SubParsersAction) -> None:
    add_train_command(subparsers, "upsampler")
    p = subparsers.add_parser(
        "info",
        help="parameter counts and diffusion config of an upsampler preset",
        description=(
            "Print, as JSON, an upsampler preset's sizes (low-resolution input, output, "
            "training crop), its parameter counts (counted on the meta device, so the paper's "
            "sizes cost nothing) and its diffusion config; for the paper's presets also "
            "Table 3's size and the relative difference."
        ),
    )
    p.add_argument("--preset", default="tiny", help="upsampler preset (default: tiny)")
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    from tessera.config.presets import preset
    from tessera.models.upsampler import PAPER_PARAMETERS, parameter_counts

    cfg = preset("upsampler", args.preset)
    return print_preset_info(
        args.preset,
        parameter_counts(cfg),
        PAPER_PARAMETERS,
        image_size=cfg.image_size,
        low_res_size=cfg.low_res_size,
        crop_size=cfg.crop_size,
        diffusion=cfg.diffusion.to_dict(),
    )

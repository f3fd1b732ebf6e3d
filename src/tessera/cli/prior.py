"""``tessera prior train | info``: the unCLIP priors (caption -> CLIP image embedding)."""

from __future__ import annotations

import argparse

from tessera.cli.train_common import add_train_command, print_preset_info

# --kind value -> stage name (also the config and checkpoint kind)
KINDS: dict[str, str] = {"diffusion": "prior", "ar": "ar_prior"}


def register(subparsers: argparse._SubParsersAction) -> None:
    add_train_command(subparsers, "prior", kinds=KINDS)
    p = subparsers.add_parser(
        "info",
        help="parameter counts of a prior preset",
        description=(
            "Print, as JSON, a prior preset's parameter counts by part (transformer, caption "
            "embeddings, other, total; counted on the meta device, so the paper's ~1B priors "
            "cost nothing) and its config; for the paper's preset also Table 3's size and the "
            "relative difference."
        ),
    )
    p.add_argument("--preset", default="tiny", help="prior preset (default: tiny)")
    p.add_argument("--kind", choices=list(KINDS), default="diffusion", help="default: diffusion")
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    from tessera.config.presets import preset
    from tessera.models.prior import PAPER_PARAMETERS, parameter_counts

    cfg = preset(KINDS[args.kind], args.preset)
    return print_preset_info(
        args.preset,
        parameter_counts(cfg),
        PAPER_PARAMETERS,
        kind=KINDS[args.kind],
        config=cfg.to_dict(),
    )

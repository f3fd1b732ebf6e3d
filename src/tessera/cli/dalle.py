"""``tessera dalle train | info``."""

from __future__ import annotations

import argparse

from tessera.cli.train_common import add_train_command


def register(subparsers: argparse._SubParsersAction) -> None:
    add_train_command(subparsers, "dalle")
    p = subparsers.add_parser(
        "info",
        help="a preset's architecture and parameter count (built on the meta device)",
        description="Print a transformer preset's shape and parameter count; allocates nothing.",
    )
    p.add_argument("--preset", default="tiny", help="dalle preset (tiny, shapes, dalle-12b)")
    p.set_defaults(func=_info)


def _info(args: argparse.Namespace) -> int:
    from tessera.config.presets import preset
    from tessera.models.dalle import count_parameters
    from tessera.nn.masks import layer_kinds

    cfg = preset("dalle", args.preset)
    kinds = layer_kinds(cfg.n_layers) if cfg.attention == "sparse" else [cfg.attention]
    counts = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
    print(f"preset: {args.preset}")
    print(
        f"layers {cfg.n_layers}, d_model {cfg.d_model}, heads {cfg.n_heads} x "
        f"{cfg.d_model // cfg.n_heads}, context {cfg.text_len} text + {cfg.image_len} image"
    )
    print("attention: " + ", ".join(f"{k} x{v}" for k, v in counts.items()))
    print(f"parameters: {count_parameters(cfg)}")
    return 0

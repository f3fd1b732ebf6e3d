"""``tessera dalle train | info``."""

from __future__ import annotations

import argparse

from tessera.cli.train_common import add_train_command


def register(subparsers: argparse._SubParsersAction) -> None:
    add_train_command(subparsers, "dalle")
    p = subparsers.add_parser(
        "info",
        help="a preset's architecture and parameter count (built on the meta device)",
        description=(
            "Print a transformer preset's shape and parameter count; allocates nothing. With "
            "--plan fsdp, also the memory per GPU of training it fully sharded over --gpus "
            "GPUs of --gpu-mem GiB (precision, EMA and activation checkpointing from the "
            "preset's training recipe; see tessera.training.plan for the assumptions)."
        ),
    )
    p.add_argument("--preset", default="tiny", help="dalle preset (tiny, shapes, dalle-12b)")
    p.add_argument("--plan", choices=["fsdp"], help="print a memory plan for this parallelism")
    p.add_argument("--gpus", type=int, default=8, help="GPUs sharing the model (default 8)")
    p.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU (default 80)")
    p.add_argument("--micro-batch", type=int, default=1, help="examples per GPU (default 1)")
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
    if args.plan:
        _plan(args, cfg)
    return 0


def _plan(args: argparse.Namespace, cfg) -> None:  # noqa: ANN001
    import torch

    from tessera.config.presets import preset, preset_names
    from tessera.config.training import TrainConfig
    from tessera.models.dalle import DALLE
    from tessera.training.plan import TransformerShape, fsdp_memory

    with torch.device("meta"):
        model = DALLE(cfg)
    params = sum(p.numel() for p in model.parameters())
    block = max(sum(p.numel() for p in b.parameters()) for b in model.fsdp_units())
    in_blocks = sum(p.numel() for b in model.fsdp_units() for p in b.parameters())
    shape = TransformerShape(
        params=params,
        root_params=params - in_blocks,
        block_params=block,
        n_layers=cfg.n_layers,
        d_model=cfg.d_model,
        positions=cfg.seq_len - 1,
        logits=(cfg.text_len - 1) * cfg.text_table + cfg.image_len * cfg.image_vocab,
    )
    names = preset_names("train.dalle")
    train = preset("train.dalle", args.preset) if args.preset in names else TrainConfig()
    print(
        f"fsdp plan: {args.gpus} GPUs x {args.gpu_mem:g} GiB, precision {train.precision}, "
        f"EMA {'on' if train.ema_decay > 0 else 'off'}, micro-batch {args.micro_batch}"
    )
    for ac in (False, True):
        plan = fsdp_memory(
            shape,
            gpus=args.gpus,
            gpu_mem_gib=args.gpu_mem,
            precision=train.precision,
            micro_batch=args.micro_batch,
            activation_checkpointing=ac,
            ema=train.ema_decay > 0,
        )
        print("\n".join(plan.lines()))

"""The one ``tessera <stage> train`` command line, shared by every stage."""

from __future__ import annotations

import argparse

_SHIPPED = "default: the shipped shapes DALL·E pipeline's"
# stage -> the checkpoints it reads (``--vae`` / ``--tokenizer`` / ``--clip``) and what for
STAGE_INPUTS: dict[str, dict[str, str]] = {
    "vae": {},
    "vqgan": {},
    "dalle": {
        "vae": "image tokenizer checkpoint (a dVAE or a VQGAN) that turns the images into the "
        "transformer's image tokens (required)",
        "tokenizer": "text tokenizer checkpoint that encodes the captions (required)",
    },
    "clip": {"tokenizer": "text tokenizer checkpoint that encodes the captions (required)"},
    "decoder": {
        "tokenizer": f"text tokenizer checkpoint for the decoder's captions ({_SHIPPED})",
        "clip": f"CLIP checkpoint whose image embeddings condition the decoder ({_SHIPPED})",
    },
    "prior": {
        "tokenizer": f"text tokenizer checkpoint for the prior's captions ({_SHIPPED})",
        "clip": f"CLIP checkpoint whose text and image embeddings the prior maps ({_SHIPPED})",
    },
    "upsampler": {},
}
STAGE_INPUTS["ar_prior"] = STAGE_INPUTS["prior"]


def add_train_command(
    subparsers: argparse._SubParsersAction,
    stage_name: str,
    kinds: dict[str, str] | None = None,
) -> None:
    """Add ``train`` for ``stage_name``; with ``kinds`` (``--kind`` value -> stage name, the
    first the default) one command trains any of several stages."""
    p = subparsers.add_parser(
        "train",
        help=f"train the {stage_name} stage (re-running resumes)",
        description=(
            f"Train the {stage_name} stage. Running the same command again on an existing run "
            "directory resumes from its newest complete checkpoint. Extra KEY=VALUE arguments "
            "override the preset's configs: model.KEY, train.KEY, or a bare KEY found in "
            "exactly one of them. Launch with torchrun for DDP."
        ),
    )
    p.add_argument("--preset", default="tiny", help="named preset (default: tiny)")
    p.add_argument("--data", default="shapes", help="data source spec (default: shapes)")
    reads = STAGE_INPUTS.get(stage_name, {})
    if kinds:  # one command, several stages: the union of what they read
        reads = {}
        for stage in kinds.values():
            reads = {**STAGE_INPUTS.get(stage, {}), **reads}
    for flag in ("vae", "tokenizer", "clip"):
        # a checkpoint the stage does not read is hidden, and refused if given anyway
        p.add_argument(f"--{flag}", help=reads.get(flag, argparse.SUPPRESS))
    p.add_argument("--run-dir", required=True, help="run directory (checkpoints, logs)")
    p.add_argument("--steps", type=int, help="total optimizer updates")
    p.add_argument("--checkpoint-every", type=int, help="updates between checkpoints")
    p.add_argument("--seed", type=int, help="random seed (model init, data order)")
    p.add_argument("--resume", default="auto", help="auto (default) | none | CHECKPOINT_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    if kinds:
        names = list(kinds)
        p.add_argument(
            "--kind",
            choices=names,
            default=names[0],
            help=f"which {stage_name} to train (default: {names[0]})",
        )
        p.set_defaults(func=lambda args: run_train(args, kinds[args.kind]))
    else:
        p.set_defaults(func=lambda args: run_train(args, stage_name))


def run_train(args: argparse.Namespace, stage_name: str) -> int:
    from tessera.errors import ConfigError
    from tessera.training.stages.runner import train_stage

    unread = [f for f in ("vae", "tokenizer", "clip") if getattr(args, f) is not None]
    unread = [f for f in unread if f not in STAGE_INPUTS.get(stage_name, {})]
    if unread:
        flags = " and ".join(f"--{f}" for f in unread)
        raise ConfigError(f"{stage_name} training reads no {flags} checkpoint: drop the flag")

    return train_stage(
        stage_name,
        run_dir=args.run_dir,
        preset=args.preset,
        data=args.data,
        vae=args.vae,
        tokenizer=args.tokenizer,
        clip=args.clip,
        overrides=args.overrides,
        steps=args.steps,
        checkpoint_every=args.checkpoint_every,
        seed=args.seed,
        resume=args.resume,
        progress=not args.no_progress,
    )


def print_preset_info(
    preset_name: str, counts: dict[str, int], paper: dict[str, int], **fields: object
) -> int:
    """Print a preset's parameter counts as JSON (``tessera decoder|upsampler|prior info``),
    with ``fields`` and, for the paper's presets, Table 3's size and the relative difference."""
    import json

    info: dict[str, object] = {"preset": preset_name, **fields, "parameters": counts}
    if preset_name in paper:
        info["paper_parameters"] = paper[preset_name]
        info["relative_difference"] = round(counts["total"] / paper[preset_name] - 1, 4)
    print(json.dumps(info, indent=2))
    return 0

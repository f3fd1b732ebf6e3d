"""The one ``tessera <stage> train`` command line, shared by every stage."""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
from typing import Any

from tessera.errors import ConfigError

log = logging.getLogger("tessera.train")

# stage name -> "module:attribute" of its ``Stage``; imported only when that stage runs.
STAGES: dict[str, str] = {}


def add_train_command(subparsers: argparse._SubParsersAction, stage_name: str) -> None:
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
    p.add_argument("--vae", help="dVAE checkpoint that tokenizes the images (stage 2)")
    p.add_argument("--tokenizer", help="text tokenizer checkpoint (stage 2)")
    p.add_argument("--run-dir", required=True, help="run directory (checkpoints, logs)")
    p.add_argument("--steps", type=int, help="total optimizer updates")
    p.add_argument("--checkpoint-every", type=int, help="updates between checkpoints")
    p.add_argument("--seed", type=int, help="random seed (model init, data order)")
    p.add_argument("--resume", default="auto", help="auto (default) | none | CHECKPOINT_DIR")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")
    p.set_defaults(func=lambda args: run_train(args, stage_name))


def split_overrides(
    overrides: list[str], model_fields: set[str], train_fields: set[str]
) -> tuple[list[str], list[str]]:
    """Route KEY=VALUE strings to the model or train config (explicit prefix or unique name)."""
    model, train = [], []
    for item in overrides:
        key = item.split("=", 1)[0]
        if key.startswith("model."):
            model.append(item[len("model.") :])
        elif key.startswith("train."):
            train.append(item[len("train.") :])
        else:
            root = key.split(".")[0]
            where = [n for n, f in (("model", model_fields), ("train", train_fields)) if root in f]
            if len(where) != 1:
                raise ConfigError(
                    f"override {key!r} "
                    + (
                        "is ambiguous; prefix it with model. or train."
                        if where
                        else "matches no config key"
                    )
                )
            (model if where[0] == "model" else train).append(item)
    return model, train


def run_train(args: argparse.Namespace, stage_name: str) -> int:
    import torch

    from tessera.training.distributed import init_distributed
    from tessera.training.stage import DataSpec
    from tessera.training.trainer import Trainer

    module, attr = STAGES[stage_name].split(":")
    stage = getattr(importlib.import_module(module), attr)
    if args.preset not in stage.presets:
        raise ConfigError(
            f"unknown {stage_name} preset {args.preset!r}; "
            f"choose from: {', '.join(sorted(stage.presets))}"
        )
    model_cfg, train_cfg = stage.presets[args.preset]()
    m_over, t_over = split_overrides(
        args.overrides,
        {f.name for f in dataclasses.fields(model_cfg)},
        {f.name for f in dataclasses.fields(train_cfg)},
    )
    flags = {"steps": args.steps, "checkpoint_every": args.checkpoint_every, "seed": args.seed}
    t_over += [f"{k}={json.dumps(v)}" for k, v in flags.items() if v is not None]
    model_cfg = model_cfg.with_overrides(m_over)
    train_cfg = train_cfg.with_overrides(t_over)

    data = DataSpec(args.data, train_cfg.seed, vae=args.vae, tokenizer=args.tokenizer)
    missing = [f"--{n}" for n in stage.needs if getattr(data, n) is None]
    if missing:
        raise ConfigError(f"{stage_name} training needs {' and '.join(missing)} DIR")
    ctx = init_distributed()
    torch.manual_seed(train_cfg.seed)
    model = stage.build_model(model_cfg)
    trainer = Trainer(
        model=model,
        objective=stage.objective(model_cfg),
        batches=stage.make_batches(model_cfg, train_cfg, data, ctx),
        config=train_cfg,
        run_dir=args.run_dir,
        ctx=ctx,
        model_config=model_cfg,
        resume=args.resume,
        sample_hook=stage.sample_hook(model_cfg, data) if stage.sample_hook else None,
        progress=not args.no_progress,
    )
    result = trainer.fit()
    if ctx.is_main and stage.export is not None and not result.interrupted:
        final = _export(trainer, stage, model_cfg, args.run_dir, data)
        print(f"release checkpoint (EMA weights): {final}")
    if ctx.is_main:
        print(
            f"{stage_name}: step {result.step}/{train_cfg.steps}, loss {result.last_loss:.4f}, "
            f"{result.examples_per_s:.1f} examples/s, {result.skipped_steps} skipped steps"
            + (" (interrupted; re-run the command to resume)" if result.interrupted else "")
        )
    return 130 if result.interrupted else 0


def _export(trainer: Any, stage: Any, model_cfg: Any, run_dir: str, data: Any) -> Any:
    from pathlib import Path

    out = Path(run_dir) / "final"
    if trainer.ema is not None:
        with trainer.ema.applied(trainer.model):
            return stage.export(trainer.model, model_cfg, out, data)
    return stage.export(trainer.model, model_cfg, out, data)

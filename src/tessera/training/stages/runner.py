"""Train one stage: preset + overrides -> configs -> model, objective, batches -> trainer.

The library form of ``tessera <stage> train``; the multi-stage recipes call it directly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from tessera.config.base import Config
from tessera.config.training import TrainConfig
from tessera.errors import ConfigError
from tessera.training.data import draw_seed
from tessera.training.stages import DataSpec, Stage, get_stage

log = logging.getLogger("tessera.train")


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


def stage_configs(
    stage: Stage,
    preset: str,
    overrides: list[str] | tuple[str, ...] = (),
    **train_flags: Any,
) -> tuple[Config, TrainConfig]:
    """The preset's (model config, train config) with KEY=VALUE overrides and flags applied
    (flags whose value is None are left at the preset's value)."""
    if preset not in stage.presets:
        raise ConfigError(
            f"unknown {stage.name} preset {preset!r}; "
            f"choose from: {', '.join(sorted(stage.presets))}"
        )
    model_cfg, train_cfg = stage.presets[preset]()
    m_over, t_over = split_overrides(
        list(overrides),
        {f.name for f in dataclasses.fields(model_cfg)},
        {f.name for f in dataclasses.fields(train_cfg)},
    )
    t_over += [f"{k}={json.dumps(v)}" for k, v in train_flags.items() if v is not None]
    return model_cfg.with_overrides(m_over), train_cfg.with_overrides(t_over)


def _init_from(model: Any, model_cfg: Config, path: str) -> None:
    """Start from a release checkpoint's weights (its config must be the run's): one-line
    errors for a missing folder, another kind or another config."""
    from tessera import checkpoint

    ck = checkpoint.load_checkpoint(path, kind=model_cfg.kind)
    if ck.obj.config != model_cfg:
        raise ConfigError(
            f"train.init_from {path}: its model config differs from the run's; "
            "override the run's model config to match it"
        )
    model.load_state_dict(ck.obj.state_dict())
    log.info("initialised from %s", path)


def train_stage(
    name: str,
    *,
    run_dir: str | Path,
    preset: str = "tiny",
    data: str = "shapes",
    vae: str | Path | None = None,
    tokenizer: str | Path | None = None,
    clip: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    steps: int | None = None,
    checkpoint_every: int | None = None,
    seed: int | None = None,
    resume: str = "auto",
    progress: bool = True,
) -> int:
    """Train (or resume) stage ``name`` in ``run_dir``; export ``run_dir/final`` when done.

    Returns 0 when the run finished, 130 when it was interrupted (re-run to resume).
    """
    import torch

    from tessera.training.distributed import init_distributed
    from tessera.training.trainer import Trainer

    stage = get_stage(name)
    model_cfg, train_cfg = stage_configs(
        stage, preset, overrides, steps=steps, checkpoint_every=checkpoint_every, seed=seed
    )
    spec = DataSpec(
        data,
        train_cfg.seed,
        vae=None if vae is None else str(vae),
        tokenizer=None if tokenizer is None else str(tokenizer),
        clip=None if clip is None else str(clip),
    )
    missing = [f"--{n}" for n in stage.needs if getattr(spec, n) is None]
    if missing:
        raise ConfigError(f"{name} training needs {' and '.join(missing)} DIR")
    if stage.fit_inputs is not None:
        explicit = split_overrides(
            list(overrides),
            {f.name for f in dataclasses.fields(model_cfg)},
            {f.name for f in dataclasses.fields(train_cfg)},
        )[0]
        model_cfg = stage.fit_inputs(model_cfg, spec, {o.split("=", 1)[0] for o in explicit})
    ctx = init_distributed()
    torch.manual_seed(train_cfg.seed)
    model = stage.build_model(model_cfg)
    if train_cfg.init_from:
        _init_from(model, model_cfg, train_cfg.init_from)
    if stage.prepare is not None:
        stage.prepare(model, model_cfg, spec)
    # the global RNG (the dVAE's gumbel noise, dropout layers) draws differently on each rank;
    # the model above was initialised alike everywhere
    torch.manual_seed(draw_seed(train_cfg.seed, ctx.rank, 0, "global"))
    trainer = Trainer(
        model=model,
        objective=stage.objective(model_cfg),
        batches=stage.make_batches(model_cfg, train_cfg, spec, ctx),
        config=train_cfg,
        run_dir=run_dir,
        ctx=ctx,
        model_config=model_cfg,
        resume=resume,
        sample_hook=stage.sample_hook(model_cfg, spec) if stage.sample_hook else None,
        progress=progress,
    )
    result = trainer.fit()
    if stage.export is not None and not result.interrupted:
        # EMA weights if any; under fsdp every rank gathers and rank 0 gets a plain model
        with trainer.release_model() as release:
            if release is not None:
                final = stage.export(release, model_cfg, Path(run_dir) / "final", spec)
                print(f"release checkpoint (EMA weights): {final}")
    if ctx.is_main:
        print(
            f"{name}: step {result.step}/{train_cfg.steps}, loss {result.last_loss:.4f}, "
            f"{result.examples_per_s:.1f} examples/s, {result.skipped_steps} skipped steps"
            + (" (interrupted; re-run the command to resume)" if result.interrupted else "")
        )
    return 130 if result.interrupted else 0

"""A tiny stage for trainer tests: dropout, torch and numpy randomness, EMA, accumulation.

Run as a script it trains into ``--run-dir`` (resuming when checkpoints exist), so tests can
kill it with SIGKILL / SIGTERM and run it again, exactly like a user re-running a command.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from tessera.config.base import Config
from tessera.config.training import TrainConfig
from tessera.training.data import EpochBatches


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig(Config):
    kind: ClassVar[str] = "toy"
    dim: int = 8
    hidden: int = 32


class ToyModel(nn.Module):
    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(cfg.dim, cfg.hidden)
        self.norm = nn.LayerNorm(cfg.hidden)
        self.drop = nn.Dropout(0.1)
        self.head = nn.Linear(cfg.hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(torch.tanh(self.norm(self.embed(x))))).squeeze(-1)


TARGET = torch.linspace(-1, 1, 8)


def make_batches(
    batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1
) -> EpochBatches:
    """Epochs of 16 batches; numpy noise drawn per (seed, epoch, global batch index)."""

    def epoch(e: int):
        for b in range(16):
            rows = []
            for r in range(world_size):
                rng = np.random.default_rng([seed, e, b, r])
                rows.append(rng.standard_normal((batch_size, 8)).astype(np.float32))
            x = torch.from_numpy(rows[rank])
            yield x, x @ TARGET

    return EpochBatches(epoch)


def objective(model: nn.Module, batch, step: int):
    x, y = batch
    # Global-RNG noise: exact resume must restore the torch RNG state.
    noise = 0.01 * torch.randn_like(y)
    loss = ((model(x) - y - noise) ** 2).mean()
    return loss, {"mse": float(loss.detach())}


def train_config(**kw) -> TrainConfig:
    base = dict(
        steps=30,
        batch_size=4,
        grad_accum=2,
        lr=3e-2,
        lr_end=1e-3,
        lr_schedule="warmup_cosine",
        warmup_steps=3,
        ema_decay=0.9,
        ema_every=2,
        checkpoint_every=5,
        keep_last=2,
        weight_decay=0.01,
    )
    base.update(kw)
    return TrainConfig(**base)


def build_trainer(run_dir, resume="auto", ctx=None, **kw):
    from tessera.training.trainer import Trainer

    torch.manual_seed(0)
    cfg = train_config(**kw)
    model = ToyModel(ToyConfig())
    rank = 0 if ctx is None else ctx.rank
    world = 1 if ctx is None else ctx.world_size
    return Trainer(
        model=model,
        objective=objective,
        batches=make_batches(cfg.batch_size, rank=rank, world_size=world),
        config=cfg,
        run_dir=run_dir,
        model_config=ToyConfig(),
        resume=resume,
        progress=False,
        ctx=ctx,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--run-dir", required=True)
    p.add_argument("--kill-after", type=int, default=0, help="SIGKILL self after this step")
    p.add_argument("--resume", default="auto")
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    trainer = build_trainer(args.run_dir, resume=args.resume, steps=args.steps)
    if args.kill_after:
        inner = trainer.objective

        def killing(model, batch, step):
            if step == args.kill_after:  # step is 0-based: steps 1..kill_after are done
                os.kill(os.getpid(), signal.SIGKILL)
            return inner(model, batch, step)

        trainer.objective = killing
    result = trainer.fit()
    print(f"done step={result.step} interrupted={result.interrupted}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Config of the generic trainer: optimisation, precision, EMA, checkpoints, distribution.

Defaults follow the DALL·E paper's transformer (App. B.2) where one exists; each stage's
presets override them (e.g. the dVAE: cosine 1e-4 -> 1.25e-6, EMA 0.999 every step).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from tessera.config.base import Config
from tessera.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """How a stage is trained. Steps count optimizer updates (each of ``grad_accum`` micro-batches).

    batch_size: examples per micro-batch per process; the global batch is
      batch_size * grad_accum * world_size.
    lr_schedule: constant | cosine (lr -> lr_end over ``lr_decay_steps``, default ``steps``) |
      warmup_cosine |
      halvings (linear warm-up, then halve at each of ``lr_milestones``; the paper's transformer).
    weight_decay: AdamW decay, never applied to gains, biases, embeddings or padding tokens.
    grad_clip: max global gradient norm (paper: 4); 0 disables clipping.
    ema_decay / ema_every: EMA of weights (dVAE 0.999 every update; transformer 0.99 every 25);
      ema_decay 0 disables it.
    init_from: a release checkpoint directory of the stage's kind whose weights start the run
      (fine-tuning: a fresh optimizer, schedule and EMA; its config must equal the run's
      model config); "" starts from the random initialisation. A resumed run ignores it.
    ema_warmup: the n-th EMA update uses ``min(ema_decay, (1 + n) / (10 + n))`` so that early
      EMA weights hold no trace of the random initialisation (with a fixed decay a share
      ``decay**n`` of it stays: 47% after 751 updates at 0.999); False: the fixed decay.
    precision: fp32 | bf16 (autocast, CPU or CUDA) | fp16 (CUDA autocast with loss scaling).
    per_resblock_scaling: with fp16, one dynamic gradient scale per residual block (App. D).
    activation_checkpointing: recompute blocks in backward (models that support it).
    checkpoint_every / keep_last: periodic atomic checkpoints, the newest ``keep_last`` kept.
    max_consecutive_skips: stop after this many non-finite steps in a row.
    powersgd_rank: > 0 enables the PowerSGD DDP communication hook with that matrix rank.
    parallelism: how several processes share the model. ``ddp``: a full replica per rank,
      gradients all-reduced (optionally PowerSGD); checkpoints are safetensors and resume on
      the same world size. ``fsdp``: FSDP2 (``fully_shard``) per block of the model's
      ``fsdp_units()`` then the root, parameters / gradients / optimizer state / EMA sharded
      over the ranks, bf16/fp16 through a ``MixedPrecisionPolicy`` (fp32 reduction);
      checkpoints go through torch's distributed checkpoint (DCP) and resume on any world
      size. A single process ignores the wrapping but keeps the DCP checkpoints.
    deterministic: torch.use_deterministic_algorithms (needed for bit-exact resume).
    compile: ``torch.compile`` the model's forward (inductor; backward and the loss included):
      one-off compile time (about a minute for a d 256 x 8 transformer on 2 CPU cores), then
      fused kernels for the norms, activations, casts, softmax and cross entropy (measured
      1.2-1.4x per bf16 step at d 256-512 x 8 on 2 CPU cores, benchmarks/bench_dalle.py).
      Eager is the default and the fallback; both compute the same loss up to floating-point
      rounding (tested).
    """

    kind: ClassVar[str] = "train"

    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 4.5e-4
    lr_end: float = 0.0
    lr_schedule: Literal["constant", "cosine", "warmup_cosine", "halvings"] = "warmup_cosine"
    warmup_steps: int = 0
    lr_milestones: tuple[int, ...] = ()
    lr_decay_steps: int = 0
    betas: tuple[float, float] = (0.9, 0.96)
    eps: float = 1e-8
    weight_decay: float = 4.5e-2
    grad_clip: float = 4.0
    ema_decay: float = 0.0
    ema_every: int = 1
    ema_warmup: bool = True
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    per_resblock_scaling: bool = False
    activation_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_last: int = 2
    log_every: int = 1
    sample_every: int = 0
    max_consecutive_skips: int = 5
    seed: int = 0
    deterministic: bool = True
    compile: bool = False
    powersgd_rank: int = 0
    powersgd_start_iter: int = 2
    parallelism: Literal["ddp", "fsdp"] = "ddp"
    num_workers: int = 0
    lr_mult: tuple[str, ...] = ()
    init_from: str = ""

    def lr_multipliers(self) -> list[tuple[str, float]]:
        """``lr_mult`` entries ``"PREFIX=FACTOR"`` parsed: parameters whose name starts with
        PREFIX (first match wins) train at FACTOR x the scheduled step size."""
        out = []
        for item in self.lr_mult:
            prefix, sep, factor = item.partition("=")
            try:
                value = float(factor)
            except ValueError:
                value = -1.0
            if not sep or not prefix or not value > 0:
                raise ConfigError(f"train.lr_mult entries are 'PREFIX=FACTOR' (> 0), got {item!r}")
            out.append((prefix, value))
        return out

    def validate(self) -> None:
        self.lr_multipliers()
        positive = ("steps", "batch_size", "grad_accum", "ema_every", "checkpoint_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.keep_last < 1:
            raise ConfigError(f"train.keep_last must be >= 1, got {self.keep_last}")
        if self.lr <= 0 or self.lr_end < 0:
            raise ConfigError("train: need lr > 0 and lr_end >= 0")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ConfigError(f"train.betas must be in [0, 1), got {self.betas}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr_decay_steps < 0:
            raise ConfigError("train.lr_decay_steps must be >= 0 (0 means: over all steps)")
        if self.grad_clip < 0 or self.weight_decay < 0 or self.warmup_steps < 0:
            raise ConfigError("train: grad_clip, weight_decay and warmup_steps must be >= 0")
        if self.per_resblock_scaling and self.precision != "fp16":
            raise ConfigError("train.per_resblock_scaling needs precision 'fp16'")
        if self.powersgd_rank < 0:
            raise ConfigError("train.powersgd_rank must be >= 0 (0 disables PowerSGD)")
        if self.powersgd_rank and self.powersgd_start_iter < 2:
            # torch's hook requires it with error feedback / warm start on.
            raise ConfigError("train.powersgd_start_iter must be >= 2")
        if self.max_consecutive_skips < 1 or self.log_every < 1 or self.num_workers < 0:
            raise ConfigError("train: max_consecutive_skips, log_every >= 1; num_workers >= 0")
        if self.parallelism not in ("ddp", "fsdp"):
            raise ConfigError(f"train.parallelism is 'ddp' or 'fsdp', got {self.parallelism!r}")
        if self.parallelism == "fsdp" and self.powersgd_rank:
            raise ConfigError("train.powersgd_rank is a DDP communication hook; not with fsdp")
        if self.parallelism == "fsdp" and self.per_resblock_scaling:
            raise ConfigError(
                "train.per_resblock_scaling is not supported with fsdp yet (its hooks read "
                "whole gradients); use precision bf16, or fp16 with one global scale"
            )
        if list(self.lr_milestones) != sorted(self.lr_milestones):
            raise ConfigError("train.lr_milestones must be sorted")

"""Config of the Gaussian diffusion process shared by the unCLIP prior, decoder and upsamplers."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from tessera.config.base import Config, register_preset
from tessera.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class DiffusionConfig(Config):
    """The forward process, what the network predicts and how it is trained.

    schedule: named β schedule (``cosine``: improved DDPM, Nichol & Dhariwal 2021 eq. 17;
      ``linear``: DDPM's 1e-4 -> 0.02 scaled to ``steps``). Named schedules never change.
    steps: T, the number of training timesteps (paper: 1000 everywhere).
    prediction: the network's target: ``eps`` (DDPM ε), ``x0`` (the clean sample; the unCLIP
      prior) or ``v`` (Salimans & Ho 2022, v = √ᾱ ε − √(1−ᾱ) x0).
    variance: reverse-process variance Σ: ``fixed_small`` (β̃, the posterior variance),
      ``fixed_large`` (β) or ``learned_range`` (improved DDPM eq. 15: the network emits an
      extra C channels v and log Σ = v log β + (1−v) log β̃; the unCLIP decoder).
    loss_weighting: ``none`` (plain MSE on the target) or ``min_snr`` (Hang et al. 2023: the
      per-timestep weight is min(SNR, γ) on the x0 error, γ = ``min_snr_gamma``).
    vb_weight: λ of improved DDPM's hybrid loss L_simple + λ L_vlb (paper 0.001; used with
      ``learned_range`` only).
    clip_x0: clamp the predicted x0 to [−c, c] while sampling (data in [−1, 1]: 1); 0 disables.
    """

    kind: ClassVar[str] = "diffusion"

    schedule: Literal["cosine", "linear"] = "cosine"
    steps: int = 1000
    prediction: Literal["eps", "x0", "v"] = "eps"
    variance: Literal["fixed_small", "fixed_large", "learned_range"] = "fixed_small"
    loss_weighting: Literal["none", "min_snr"] = "none"
    min_snr_gamma: float = 5.0
    vb_weight: float = 0.001
    clip_x0: float = 1.0

    def validate(self) -> None:
        if self.steps < 2:
            raise ConfigError(f"diffusion.steps must be >= 2, got {self.steps}")
        if not self.min_snr_gamma > 0:
            raise ConfigError(f"diffusion.min_snr_gamma must be > 0, got {self.min_snr_gamma}")
        if not self.vb_weight >= 0:
            raise ConfigError(f"diffusion.vb_weight must be >= 0, got {self.vb_weight}")
        if not self.clip_x0 >= 0:
            raise ConfigError(f"diffusion.clip_x0 must be >= 0 (0 disables), got {self.clip_x0}")

    @property
    def out_channels_factor(self) -> int:
        """Output channels per input channel: 2 with a learned variance range, else 1."""
        return 2 if self.variance == "learned_range" else 1


@register_preset("diffusion", "tiny")
def _tiny() -> DiffusionConfig:
    return DiffusionConfig()


@register_preset("diffusion", "decoder")
def _decoder() -> DiffusionConfig:
    """The paper's 64 px decoder: cosine, 1000 steps, ε prediction, learned Σ (GLIDE's)."""
    return DiffusionConfig(schedule="cosine", prediction="eps", variance="learned_range")


@register_preset("diffusion", "upsampler")
def _upsampler() -> DiffusionConfig:
    """The paper's 64 -> 256 upsampler: cosine, ε prediction, fixed Σ (sampled with DDIM)."""
    return DiffusionConfig(schedule="cosine", prediction="eps", variance="fixed_small")


@register_preset("diffusion", "upsampler-linear")
def _upsampler_linear() -> DiffusionConfig:
    """The paper's 256 -> 1024 upsampler: the linear schedule, ε prediction, fixed Σ."""
    return DiffusionConfig(schedule="linear", prediction="eps", variance="fixed_small")


@register_preset("diffusion", "prior")
def _prior() -> DiffusionConfig:
    """The paper's diffusion prior: cosine, predicts the unnoised embedding z_i (x0)."""
    return DiffusionConfig(schedule="cosine", prediction="x0", variance="fixed_small")

"""Noise schedules: named β schedules, the derived float64 tables, and timestep respacing.

Notation (Ho et al. 2020, "DDPM"): β_t is the variance added at step t, α_t = 1 − β_t,
ᾱ_t = ∏_{s≤t} α_s. Index 0 is the first (least noisy) step. All tables are float64 on the CPU;
the functions of :mod:`tessera.diffusion.process` gather and cast them per batch.

A schedule may be *respaced* (Nichol & Dhariwal 2021, section 4): sampling visits only a
subset k_0 < k_1 < ... < k_{N−1} of the T training steps, with β recomputed so that ᾱ at each
kept step is unchanged. ``Schedule.timesteps[i]`` is the original step k_i, which is what the
network was trained to see.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from tessera.config.diffusion import DiffusionConfig
from tessera.errors import ConfigError

__all__ = [
    "Schedule",
    "named_betas",
    "named_schedule",
    "respace",
    "schedule_for",
    "space_timesteps",
]

_MAX_BETA = 0.999  # improved DDPM: β_t is capped to avoid a singularity at t = T
_COSINE_S = 0.008  # improved DDPM eq. 17: the offset s


def named_betas(name: str, steps: int) -> np.ndarray:
    """The β_t of a named schedule: float64 array of shape (steps,). Names never change meaning.

    ``linear``: DDPM's 1e-4 → 0.02 over 1000 steps, with both ends scaled by 1000/steps so
    that other step counts traverse the same noise range (guided-diffusion's convention).
    ``cosine``: improved DDPM eq. 17, ᾱ(t) = f(t)/f(0) with f(t) = cos²(((t/T) + s)/(1 + s)·π/2),
    s = 0.008, and β_t = min(1 − ᾱ(t+1)/ᾱ(t), 0.999) (their section 3.2).
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigError(f"schedule steps must be a positive integer, got {steps!r}")
    if name == "linear":
        scale = 1000.0 / steps
        return np.linspace(1e-4 * scale, 0.02 * scale, steps, dtype=np.float64)
    if name == "cosine":
        T = steps

        def f(t: float) -> float:
            return math.cos((t / T + _COSINE_S) / (1 + _COSINE_S) * math.pi / 2) ** 2

        # f(0) cancels in the ratio ᾱ(t+1)/ᾱ(t) = f(t+1)/f(t)
        return np.array([min(1.0 - f(t + 1) / f(t), _MAX_BETA) for t in range(T)], dtype=np.float64)
    raise ConfigError(f"unknown noise schedule {name!r}; choose from: cosine, linear")


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """Float64 CPU tables of one (possibly respaced) diffusion process, all of shape (N,).

    betas: β_i. alphas_cumprod: ᾱ_i. alphas_cumprod_prev: ᾱ_{i−1} (ᾱ_{−1} = 1).
    alphas_cumprod_next: ᾱ_{i+1} (0 after the last step). posterior_variance: β̃_i =
    β_i (1 − ᾱ_{i−1})/(1 − ᾱ_i) (DDPM eq. 7). posterior_log_variance_clipped: log β̃_i with
    β̃_0 = 0 replaced by β̃_1 (improved DDPM). posterior_mean_coef1/2: the coefficients of x0
    and x_t in μ̃ (DDPM eq. 7). timesteps: (N,) long, the original training step fed to the
    network at index i. num_train_steps: T of training.
    """

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    alphas_cumprod_next: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_log_variance_clipped: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor
    timesteps: torch.Tensor
    num_train_steps: int

    @property
    def num_steps(self) -> int:
        """N, the number of steps of this (possibly respaced) schedule."""
        return int(self.betas.shape[0])

    @classmethod
    def from_betas(
        cls,
        betas: np.ndarray | torch.Tensor | Sequence[float],
        *,
        timesteps: torch.Tensor | Sequence[int] | None = None,
        num_train_steps: int | None = None,
    ) -> Schedule:
        """Build every table from β (N,) in float64. ``timesteps`` defaults to 0..N−1 and
        ``num_train_steps`` to N (an unrespaced schedule)."""
        beta = torch.as_tensor(np.asarray(betas, dtype=np.float64), dtype=torch.float64)
        if beta.ndim != 1 or beta.numel() < 1:
            raise ConfigError(f"betas must be a non-empty 1-D sequence, got shape {beta.shape}")
        if not bool(((beta > 0) & (beta <= 1)).all()):
            raise ConfigError("betas must lie in (0, 1]")
        alpha = 1.0 - beta  # α_i
        return cls._build(
            beta,
            alpha,
            torch.cumprod(alpha, 0),
            timesteps=timesteps,
            num_train_steps=num_train_steps,
        )

    @classmethod
    def _build(
        cls,
        beta: torch.Tensor,
        alpha: torch.Tensor,
        abar: torch.Tensor,
        *,
        timesteps: torch.Tensor | Sequence[int] | None,
        num_train_steps: int | None,
    ) -> Schedule:
        """Every table from float64 β_i, α_i = 1 − β_i and ᾱ_i (N,)."""
        n = beta.numel()
        one = torch.ones(1, dtype=torch.float64)
        abar_prev = torch.cat([one, abar[:-1]])
        abar_next = torch.cat([abar[1:], torch.zeros(1, dtype=torch.float64)])
        # DDPM eq. 7: β̃_t = (1 − ᾱ_{t−1})/(1 − ᾱ_t) β_t and
        # μ̃_t(x_t, x0) = √ᾱ_{t−1} β_t/(1 − ᾱ_t) x0 + √α_t (1 − ᾱ_{t−1})/(1 − ᾱ_t) x_t
        post_var = beta * (1.0 - abar_prev) / (1.0 - abar)
        # β̃_0 = 0; improved DDPM clips its log to log β̃_1 (with one step, to log β_0)
        first = post_var[1:2] if n > 1 else beta[:1]
        post_log_var = torch.log(torch.cat([first, post_var[1:]]))
        coef1 = beta * torch.sqrt(abar_prev) / (1.0 - abar)
        coef2 = (1.0 - abar_prev) * torch.sqrt(alpha) / (1.0 - abar)
        if timesteps is None:
            ts = torch.arange(n, dtype=torch.long)
        else:
            ts = torch.as_tensor(timesteps, dtype=torch.long).cpu()
            if ts.shape != (n,):
                raise ConfigError(f"timesteps must have shape ({n},), got {tuple(ts.shape)}")
        return cls(
            betas=beta,
            alphas_cumprod=abar,
            alphas_cumprod_prev=abar_prev,
            alphas_cumprod_next=abar_next,
            posterior_variance=post_var,
            posterior_log_variance_clipped=post_log_var,
            posterior_mean_coef1=coef1,
            posterior_mean_coef2=coef2,
            timesteps=ts,
            num_train_steps=int(num_train_steps if num_train_steps is not None else n),
        )


def named_schedule(name: str, steps: int) -> Schedule:
    """The unrespaced :class:`Schedule` of a named β schedule with T = ``steps``."""
    return Schedule.from_betas(named_betas(name, steps))


def schedule_for(cfg: DiffusionConfig) -> Schedule:
    """The training schedule of a diffusion config (``cfg.schedule`` over ``cfg.steps``)."""
    return named_schedule(cfg.schedule, cfg.steps)


def space_timesteps(num_train_steps: int, spec: str | int | Sequence[int]) -> list[int]:
    """The sorted original steps kept by a respacing spec (guided-diffusion's ``respace``).

    ``"ddimN"``: the smallest stride k with exactly N steps in range(0, T, k) (starts at 0;
    an error if no stride gives N). ``N`` or ``"N"``: N evenly spaced steps from 0 to T−1.
    ``"a,b,c"`` or a sequence of ints: T is cut into equal sections (the first T mod
    sections one longer) and section j keeps its count c_j of evenly spaced steps, its first
    and last step included when c_j > 1 (``"10,10,3,2,2"`` is GLIDE's 27-step "fast27").
    """
    T = num_train_steps
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("ddim"):
            try:
                want = int(text[4:])
            except ValueError:
                raise ConfigError(
                    f"bad timestep spec {spec!r}: expected ddimN, e.g. ddim50"
                ) from None
            for stride in range(1, T):
                if len(range(0, T, stride)) == want:
                    return list(range(0, T, stride))
            raise ConfigError(
                f"bad timestep spec {spec!r}: no stride gives exactly {want} of {T} steps"
            )
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise ConfigError(
                f"bad timestep spec {spec!r}: expected ddimN, N or comma-separated counts"
            ) from None
    elif isinstance(spec, bool):
        raise ConfigError(f"bad timestep spec {spec!r}")
    elif isinstance(spec, int):
        counts = [spec]
    else:
        counts = [int(c) for c in spec]
    if not counts or any(c < 1 for c in counts):
        raise ConfigError(f"bad timestep spec {spec!r}: every section count must be >= 1")
    base, extra = divmod(T, len(counts))
    kept: list[int] = []
    start = 0
    for j, count in enumerate(counts):
        size = base + (1 if j < extra else 0)
        if count > size:
            raise ConfigError(
                f"bad timestep spec {spec!r}: section {j} has {size} steps, cannot keep {count}"
            )
        gap = (size - 1) / (count - 1) if count > 1 else 1.0
        kept.extend(start + round(k * gap) for k in range(count))
        start += size
    return sorted(set(kept))


def respace(schedule: Schedule, spec: str | int | Sequence[int]) -> Schedule:
    """Keep the steps ``space_timesteps(schedule.num_steps, spec)`` of an unrespaced schedule.

    ᾱ at each kept step k_i is unchanged, so β'_i = 1 − ᾱ_{k_i}/ᾱ_{k_{i−1}} (ᾱ_{k_{−1}} = 1);
    ``timesteps`` maps index i to the original training step k_i.
    """
    if not torch.equal(schedule.timesteps, torch.arange(schedule.num_steps)):
        raise ConfigError("respace expects an unrespaced schedule (timesteps 0..T-1)")
    kept = space_timesteps(schedule.num_steps, spec)
    abar = schedule.alphas_cumprod[kept]
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    alpha = abar / abar_prev  # α'_i = ᾱ_{k_i}/ᾱ_{k_{i−1}}
    # ᾱ is kept as given rather than re-accumulated from β', so it matches bit for bit
    return Schedule._build(
        1.0 - alpha, alpha, abar, timesteps=kept, num_train_steps=schedule.num_train_steps
    )

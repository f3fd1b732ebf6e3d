"""The Gaussian forward process q and the reverse-process parameters p_θ.

Every function takes ``s`` (a :class:`~tessera.diffusion.schedules.Schedule`) and ``t``, a
LongTensor (B,) of schedule *indices* 0..N−1 (for a respaced schedule the network is fed
``s.timesteps[t]`` instead; the samplers do that). Coefficients are computed in float64 on
the CPU, then cast to the dtype of ``x`` and gathered on its device, broadcast to
(B, 1, ..., 1). Tensors ``x0``, ``x_t``, ``eps``, ``v`` have one shape (B, ...).
"""

from __future__ import annotations

import torch

from tessera.diffusion.schedules import Schedule
from tessera.errors import ConfigError

__all__ = [
    "eps_from_v",
    "eps_from_x0",
    "extract",
    "p_mean_variance",
    "prediction_target",
    "q_posterior",
    "q_sample",
    "split_output",
    "v_target",
    "x0_from_eps",
    "x0_from_v",
]

_PREDICTIONS = ("eps", "x0", "v")
_VARIANCES = ("fixed_small", "fixed_large", "learned_range")
# how far outside [−1, 1] the loss lets a learned-range output go before clamping it (the
# interpolation extrapolated 4.5x past each end; exp stays finite in float32)
LOSS_VARIANCE_BOUND = 10.0


def extract(arr: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """arr[t] as x's dtype on x's device, shaped (B, 1, ..., 1) to broadcast against x.

    arr: (N,) float64 table; t: (B,) long indices. The cast happens before the gather (the
    values are identical: gathering does no arithmetic), so no float64 reaches the device.
    """
    vals = arr.to(dtype=x.dtype).to(x.device)[t.to(x.device)]
    return vals.reshape(t.shape[0], *([1] * (x.ndim - 1)))


def _sqrt_abar(s: Schedule) -> torch.Tensor:
    return torch.sqrt(s.alphas_cumprod)


def _sqrt_one_minus_abar(s: Schedule) -> torch.Tensor:
    return torch.sqrt(1.0 - s.alphas_cumprod)


def q_sample(s: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_t ~ q(x_t | x0) = N(√ᾱ_t x0, (1 − ᾱ_t) I) (DDPM eq. 4), reparameterised by ``noise``."""
    return extract(_sqrt_abar(s), t, x0) * x0 + extract(_sqrt_one_minus_abar(s), t, x0) * noise


def q_posterior(
    s: Schedule, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q(x_{t−1} | x_t, x0) = N(μ̃_t, β̃_t I) (DDPM eqs. 6–7): (mean (B, ...), variance and
    log-variance (B, 1, ..., 1)); the log-variance at t = 0 is clipped to log β̃_1."""
    mean = (
        extract(s.posterior_mean_coef1, t, x_t) * x0 + extract(s.posterior_mean_coef2, t, x_t) * x_t
    )
    return (
        mean,
        extract(s.posterior_variance, t, x_t),
        extract(s.posterior_log_variance_clipped, t, x_t),
    )


def x0_from_eps(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0 = (x_t − √(1 − ᾱ_t) ε)/√ᾱ_t, DDPM eq. 4 solved for x0."""
    recip = torch.sqrt(1.0 / s.alphas_cumprod)
    recip_m1 = torch.sqrt(1.0 / s.alphas_cumprod - 1.0)
    return extract(recip, t, x_t) * x_t - extract(recip_m1, t, x_t) * eps


def eps_from_x0(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """ε = (x_t/√ᾱ_t − x0)/√(1/ᾱ_t − 1), DDPM eq. 4 solved for ε."""
    recip = torch.sqrt(1.0 / s.alphas_cumprod)
    recip_m1 = torch.sqrt(1.0 / s.alphas_cumprod - 1.0)
    return (extract(recip, t, x_t) * x_t - x0) / extract(recip_m1, t, x_t)


def v_target(s: Schedule, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ_t ε − √(1 − ᾱ_t) x0 (Salimans & Ho 2022, section 4)."""
    return extract(_sqrt_abar(s), t, x0) * eps - extract(_sqrt_one_minus_abar(s), t, x0) * x0


def x0_from_v(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """x0 = √ᾱ_t x_t − √(1 − ᾱ_t) v (with x_t = √ᾱ x0 + √(1−ᾱ) ε and v as above)."""
    return extract(_sqrt_abar(s), t, x_t) * x_t - extract(_sqrt_one_minus_abar(s), t, x_t) * v


def eps_from_v(s: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """ε = √(1 − ᾱ_t) x_t + √ᾱ_t v."""
    return extract(_sqrt_one_minus_abar(s), t, x_t) * x_t + extract(_sqrt_abar(s), t, x_t) * v


def prediction_target(
    cfg_prediction: str, s: Schedule, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """The regression target of the network for ``prediction`` ``eps`` | ``x0`` | ``v``."""
    if cfg_prediction == "eps":
        return eps
    if cfg_prediction == "x0":
        return x0
    if cfg_prediction == "v":
        return v_target(s, x0, eps, t)
    raise ConfigError(f"unknown prediction {cfg_prediction!r}; choose from: eps, x0, v")


def split_output(output: torch.Tensor, variance: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(prediction, variance values or None) of a raw network output (B, C·k, ...).

    With ``learned_range`` the output has 2C channels along dim 1: the first C are the
    prediction, the last C the interpolation values v of improved DDPM eq. 15.
    """
    if variance == "learned_range":
        if output.shape[1] % 2:
            raise ConfigError(
                f"learned_range output needs an even channel count, got {output.shape[1]}"
            )
        pred, var_values = output.chunk(2, dim=1)
        return pred, var_values
    if variance not in _VARIANCES:
        raise ConfigError(f"unknown variance {variance!r}; choose from: {', '.join(_VARIANCES)}")
    return output, None


def _x0_eps(
    s: Schedule,
    pred: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    prediction: str,
    clip_x0: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, ε) implied by a prediction; x0 clamped to [−clip_x0, clip_x0] when clip_x0 > 0,
    and then ε recomputed from the clamped x0 so that the pair stays consistent with x_t."""
    if prediction == "eps":
        x0, eps = x0_from_eps(s, x_t, t, pred), pred
    elif prediction == "x0":
        x0, eps = pred, None
    elif prediction == "v":
        x0, eps = x0_from_v(s, x_t, t, pred), eps_from_v(s, x_t, t, pred)
    else:
        raise ConfigError(f"unknown prediction {prediction!r}; choose from: eps, x0, v")
    if clip_x0 > 0:
        x0 = x0.clamp(-clip_x0, clip_x0)
        eps = None
    if eps is None:
        eps = eps_from_x0(s, x_t, t, x0)
    return x0, eps


def _fixed_large_variance(s: Schedule) -> torch.Tensor:
    """β_t with the t = 0 entry replaced by β̃_1 (guided-diffusion: a better decoder NLL)."""
    if s.num_steps < 2:
        return s.betas.clone()
    return torch.cat([s.posterior_variance[1:2], s.betas[1:]])


def p_mean_variance(
    s: Schedule,
    output: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    *,
    prediction: str,
    variance: str,
    clip_x0: float = 0.0,
    clamp_variance: bool = True,
) -> dict[str, torch.Tensor]:
    """Parameters of p_θ(x_{t−1} | x_t) = N(μ_θ, Σ_θ) from a raw network output.

    Returns ``mean`` (B, ...) = μ̃_t(x_t, x̂0) (DDPM eq. 7 with the predicted x0),
    ``variance`` / ``log_variance`` (B, 1, ...) for fixed Σ or (B, C, ...) when learned,
    ``x0`` (clamped to [−clip_x0, clip_x0] if clip_x0 > 0) and the matching ``eps``.

    ``learned_range`` (improved DDPM eq. 15): Σ = exp(v log β_t + (1 − v) log β̃_t), with the
    network value mapped from [−1, 1] to v ∈ [0, 1]. With ``clamp_variance`` (sampling) it is
    clamped to [−1, 1] first, so an extreme output gives the end of the range instead of an
    infinite variance. The loss passes False: as in improved DDPM, an output outside [−1, 1]
    still gets the variational term's gradient and can come back (a clamp at ±1 gives it none,
    so it stayed out); only far outside, at ±``LOSS_VARIANCE_BOUND``, is it clamped, where
    float32 would overflow.
    """
    pred, var_values = split_output(output, variance)
    if variance == "learned_range":
        assert var_values is not None
        log_min = extract(s.posterior_log_variance_clipped, t, x_t)  # log β̃_t
        log_max = extract(torch.log(s.betas), t, x_t)  # log β_t
        bound = 1.0 if clamp_variance else LOSS_VARIANCE_BOUND
        v = var_values.clamp(-bound, bound)
        frac = (v + 1.0) / 2.0
        log_variance = frac * log_max + (1.0 - frac) * log_min
        var = torch.exp(log_variance)
    elif variance == "fixed_small":
        var = extract(s.posterior_variance, t, x_t)
        log_variance = extract(s.posterior_log_variance_clipped, t, x_t)
    else:  # fixed_large
        large = _fixed_large_variance(s)
        var = extract(large, t, x_t)
        log_variance = extract(torch.log(large), t, x_t)
    x0, eps = _x0_eps(s, pred, x_t, t, prediction, clip_x0)
    mean, _, _ = q_posterior(s, x0, x_t, t)
    return {"mean": mean, "variance": var, "log_variance": log_variance, "x0": x0, "eps": eps}

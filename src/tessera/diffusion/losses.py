"""Training losses: the simple MSE (DDPM eq. 14), min-SNR weighting and the hybrid loss.

Shapes: ``t`` is a LongTensor (B,) of schedule indices; tensors are (B, ...); per-sample
losses are (B,) (mean over every non-batch dimension).
"""

from __future__ import annotations

import math

import torch

from tessera.config.diffusion import DiffusionConfig
from tessera.diffusion.process import (
    p_mean_variance,
    prediction_target,
    q_posterior,
    split_output,
)
from tessera.diffusion.schedules import Schedule
from tessera.errors import ConfigError

__all__ = [
    "approx_standard_normal_cdf",
    "diffusion_loss",
    "discretized_gaussian_log_likelihood",
    "loss_weight",
    "normal_kl",
    "snr",
]


def _snr64(s: Schedule) -> torch.Tensor:
    return s.alphas_cumprod / (1.0 - s.alphas_cumprod)


def snr(s: Schedule, t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ᾱ_t/(1 − ᾱ_t) (Kingma et al. 2021), computed in float64: float32 (B,)."""
    return _snr64(s).to(torch.float32).to(t.device)[t]


def loss_weight(
    s: Schedule,
    t: torch.Tensor,
    *,
    prediction: str,
    weighting: str,
    gamma: float = 5.0,
) -> torch.Tensor:
    """Per-sample weight (B,) float32 of the MSE on the ``prediction`` target.

    ``min_snr`` (Hang et al. 2023, eq. 6 ff.): the loss on x0 gets min(SNR_t, γ). Since
    ‖ε − ε̂‖² = SNR·‖x0 − x̂0‖² and ‖v − v̂‖² = (SNR + 1)·‖x0 − x̂0‖², the weights on the
    ε, x0 and v targets are min(SNR, γ)/SNR, min(SNR, γ) and min(SNR, γ)/(SNR + 1).
    """
    if weighting == "none":
        return torch.ones(t.shape[0], dtype=torch.float32, device=t.device)
    if weighting != "min_snr":
        raise ConfigError(f"unknown loss weighting {weighting!r}; choose from: none, min_snr")
    r = _snr64(s)
    clipped = torch.clamp(r, max=float(gamma))
    if prediction == "eps":
        w = clipped / r
    elif prediction == "x0":
        w = clipped
    elif prediction == "v":
        w = clipped / (r + 1.0)
    else:
        raise ConfigError(f"unknown prediction {prediction!r}; choose from: eps, x0, v")
    return w.to(torch.float32).to(t.device)[t]


def normal_kl(
    mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor, logvar2: torch.Tensor
) -> torch.Tensor:
    """KL(N(μ1, σ1²) || N(μ2, σ2²)) elementwise in nats (broadcasting):
    ½(−1 + log σ2² − log σ1² + σ1²/σ2² + (μ1 − μ2)²/σ2²)."""
    return 0.5 * (
        -1.0
        + logvar2
        - logvar1
        + torch.exp(logvar1 - logvar2)
        + (mean1 - mean2) ** 2 * torch.exp(-logvar2)
    )


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) ≈ ½(1 + tanh(√(2/π)(x + 0.044715 x³))), the tanh approximation used by DDPM."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(
    x: torch.Tensor, *, means: torch.Tensor, log_scales: torch.Tensor
) -> torch.Tensor:
    """log p(x) in nats, elementwise, of data in [−1, 1] quantised to 256 bins of width 2/255
    under N(means, exp(log_scales)²) (DDPM section 3.3's decoder L_0; the end bins extend to
    ±∞). Probabilities are clamped at 1e-12 before the log."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    half_bin = 1.0 / 255.0
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + half_bin))
    cdf_minus = approx_standard_normal_cdf(inv_std * (centered - half_bin))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))  # log P(X ≤ x + ½bin), x = −1's bin
    log_one_minus_cdf_minus = torch.log((1.0 - cdf_minus).clamp(min=1e-12))  # x = +1's bin
    log_delta = torch.log((cdf_plus - cdf_minus).clamp(min=1e-12))
    return torch.where(
        x < -0.999,
        log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_minus, log_delta),
    )


def _mean_flat(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=tuple(range(1, x.ndim))) if x.ndim > 1 else x


def diffusion_loss(
    output: torch.Tensor,
    *,
    x0: torch.Tensor,
    x_t: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    s: Schedule,
    cfg: DiffusionConfig,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-sample training loss (B,) and its terms, for x_t = q_sample(s, x0, t, noise).

    loss = w_t · mean‖target − prediction‖² (DDPM eq. 14 on ``cfg.prediction``'s target,
    w_t = :func:`loss_weight`), plus, with ``learned_range``, λ·T·L_vlb (improved DDPM's
    L_hybrid = L_simple + λ L_vlb, eq. 16, λ = ``cfg.vb_weight``; L_vlb = T·E_t[L_t]). L_t is
    KL(q(x_{t−1}|x_t, x0) || p_θ(x_{t−1}|x_t)) in bits/dim for t > 0 and the discretized
    decoder NLL for t = 0, computed with the prediction half *detached* (section 3.1: "we
    apply a stop-gradient to the μ_θ(x_t, t) output for the L_vlb term. This way, L_vlb can
    guide Σ_θ(x_t, t) while L_simple is still the main source of influence over μ_θ(x_t, t)").

    Terms: ``mse`` (B,) the unweighted MSE; ``vb`` (B,) L_t in bits/dim (learned_range only).
    """
    pred, var_values = split_output(output, cfg.variance)
    target = prediction_target(cfg.prediction, s, x0, noise, t)
    mse = _mean_flat((target.float() - pred.float()) ** 2)
    weight = loss_weight(
        s, t, prediction=cfg.prediction, weighting=cfg.loss_weighting, gamma=cfg.min_snr_gamma
    )
    loss = weight * mse
    terms = {"mse": mse}
    if var_values is not None:
        frozen = torch.cat([pred.detach(), var_values], dim=1).float()
        x_t32, x032 = x_t.float(), x0.float()
        p = p_mean_variance(
            s,
            frozen,
            x_t32,
            t,
            prediction=cfg.prediction,
            variance=cfg.variance,
            clip_x0=0.0,
            clamp_variance=False,  # Σ's output keeps its gradient outside [−1, 1]
        )
        true_mean, _, true_log_var = q_posterior(s, x032, x_t32, t)
        kl = _mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"]))
        kl = kl / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(
            x032, means=p["mean"], log_scales=0.5 * p["log_variance"]
        )
        nll = _mean_flat(nll) / math.log(2.0)
        vb = torch.where(t.to(kl.device) == 0, nll, kl)
        terms["vb"] = vb
        loss = loss + cfg.vb_weight * s.num_train_steps * vb
    return loss, terms

"""Gaussian diffusion core of unCLIP (prior, decoder, upsamplers): pure functions.

:mod:`~tessera.diffusion.schedules` (named β schedules, :class:`Schedule`, respacing),
:mod:`~tessera.diffusion.process` (q and p_θ), :mod:`~tessera.diffusion.losses` (simple,
min-SNR and hybrid losses), :mod:`~tessera.diffusion.samplers` (DDPM, DDIM, DDIM inversion,
classifier-free guidance).
"""

from __future__ import annotations

from tessera.diffusion.losses import (
    approx_standard_normal_cdf,
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    loss_weight,
    normal_kl,
    snr,
)
from tessera.diffusion.process import (
    eps_from_v,
    eps_from_x0,
    extract,
    p_mean_variance,
    prediction_target,
    q_posterior,
    q_sample,
    split_output,
    v_target,
    x0_from_eps,
    x0_from_v,
)
from tessera.diffusion.samplers import (
    ModelFn,
    classifier_free_guidance,
    ddim_invert,
    ddim_reverse_step,
    ddim_sample,
    ddim_step,
    ddpm_sample,
    ddpm_step,
    randn,
    repaint_levels,
    repaint_sample,
)
from tessera.diffusion.schedules import (
    Schedule,
    named_betas,
    named_schedule,
    respace,
    schedule_for,
    space_timesteps,
)

__all__ = [
    "ModelFn",
    "Schedule",
    "approx_standard_normal_cdf",
    "classifier_free_guidance",
    "ddim_invert",
    "ddim_reverse_step",
    "ddim_sample",
    "ddim_step",
    "ddpm_sample",
    "ddpm_step",
    "diffusion_loss",
    "discretized_gaussian_log_likelihood",
    "eps_from_v",
    "eps_from_x0",
    "extract",
    "loss_weight",
    "named_betas",
    "named_schedule",
    "normal_kl",
    "p_mean_variance",
    "prediction_target",
    "q_posterior",
    "q_sample",
    "randn",
    "repaint_levels",
    "repaint_sample",
    "respace",
    "schedule_for",
    "snr",
    "space_timesteps",
    "split_output",
    "v_target",
    "x0_from_eps",
    "x0_from_v",
]

"""Diffusion schedules and config: closed forms, respacing, one-line errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tessera.config.diffusion import DiffusionConfig
from tessera.config.presets import preset
from tessera.diffusion import (
    Schedule,
    named_betas,
    named_schedule,
    respace,
    schedule_for,
    space_timesteps,
)
from tessera.errors import ConfigError


def _f(t: float, T: int) -> float:
    """improved DDPM eq. 17 before normalisation: cos²(((t/T) + s)/(1 + s) · π/2), s = 0.008."""
    return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2


# -- named schedules -----------------------------------------------------------------------------


@pytest.mark.parametrize("t", [0, 1, 10, 250, 500, 900])
def test_cosine_alphas_cumprod_match_the_closed_form(t: int) -> None:
    s = named_schedule("cosine", 1000)
    # index t is the step whose noise level is ᾱ(t + 1) = f(t + 1)/f(0) (β uncapped here)
    assert float(s.alphas_cumprod[t]) == pytest.approx(_f(t + 1, 1000) / _f(0, 1000), rel=1e-12)


def test_cosine_betas_are_capped_and_float64() -> None:
    b = named_betas("cosine", 1000)
    assert b.dtype == np.float64 and b.shape == (1000,)
    assert b.max() <= 0.999 and b[-1] == 0.999  # the last step hits the cap
    assert b.min() > 0
    assert b[0] == pytest.approx(1 - _f(1, 1000) / _f(0, 1000), rel=1e-12)


def test_linear_betas_endpoints_scale_with_steps() -> None:
    b = named_betas("linear", 1000)
    assert b[0] == pytest.approx(1e-4, rel=1e-12) and b[-1] == pytest.approx(0.02, rel=1e-12)
    b4 = named_betas("linear", 4000)  # guided-diffusion: scale = 1000/T
    assert b4[0] == pytest.approx(2.5e-5, rel=1e-12) and b4[-1] == pytest.approx(5e-3, rel=1e-12)
    assert np.all(np.diff(b) > 0)


def test_unknown_schedule_is_a_one_line_error() -> None:
    with pytest.raises(ConfigError, match="unknown noise schedule 'quadratic'") as e:
        named_betas("quadratic", 10)
    assert "\n" not in str(e.value)


def test_schedule_tables_match_hand_computation() -> None:
    betas = np.array([0.1, 0.2, 0.3], dtype=np.float64)
    s = Schedule.from_betas(betas)
    abar = [0.9, 0.9 * 0.8, 0.9 * 0.8 * 0.7]
    assert s.num_steps == 3 and s.num_train_steps == 3
    assert s.timesteps.tolist() == [0, 1, 2] and s.timesteps.dtype == torch.long
    for name in ("betas", "alphas_cumprod", "posterior_variance", "posterior_mean_coef1"):
        assert getattr(s, name).dtype == torch.float64
    torch.testing.assert_close(s.alphas_cumprod, torch.tensor(abar, dtype=torch.float64))
    torch.testing.assert_close(s.alphas_cumprod_prev[0], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(s.alphas_cumprod_next[-1], torch.tensor(0.0, dtype=torch.float64))
    # β̃_2 = β_2 (1 − ᾱ_1)/(1 − ᾱ_2); β̃_0 = 0 and its log is clipped to log β̃_1
    pv2 = 0.3 * (1 - abar[1]) / (1 - abar[2])
    pv1 = 0.2 * (1 - abar[0]) / (1 - abar[1])
    assert float(s.posterior_variance[2]) == pytest.approx(pv2, rel=1e-14)
    assert float(s.posterior_variance[0]) == 0.0
    assert float(s.posterior_log_variance_clipped[0]) == pytest.approx(math.log(pv1), rel=1e-14)


def test_schedule_for_config_and_presets() -> None:
    cfg = DiffusionConfig(schedule="linear", steps=50)
    s = schedule_for(cfg)
    assert s.num_steps == 50 and float(s.betas[0]) == pytest.approx(1e-4 * 20)
    assert preset("diffusion", "decoder").variance == "learned_range"
    assert preset("diffusion", "decoder").out_channels_factor == 2
    assert preset("diffusion", "prior").prediction == "x0"
    assert preset("diffusion", "upsampler-linear").schedule == "linear"
    assert preset("diffusion", "upsampler").out_channels_factor == 1
    assert isinstance(preset("diffusion", "tiny"), DiffusionConfig)
    assert DiffusionConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("steps", 1, "steps must be >= 2"),
        ("min_snr_gamma", 0.0, "min_snr_gamma must be > 0"),
        ("vb_weight", -1.0, "vb_weight must be >= 0"),
        ("clip_x0", -0.5, "clip_x0 must be >= 0"),
        ("prediction", "score", "is not one of"),
    ],
)
def test_config_validation_is_one_line(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        DiffusionConfig.from_dict({field: value})
    assert "\n" not in str(e.value)


# -- respacing ---------------------------------------------------------------------------------


def test_space_timesteps_ddim() -> None:
    assert space_timesteps(1000, "ddim10") == list(range(0, 1000, 100))
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    kept = space_timesteps(1000, "ddim27")  # smallest stride with exactly 27 steps: 38
    assert len(kept) == 27 and kept[:3] == [0, 38, 76]


def test_space_timesteps_sections() -> None:
    kept = space_timesteps(300, "10,10,3")
    assert len(kept) == 23
    first, second, third = kept[:10], kept[10:20], kept[20:]
    assert first[0] == 0 and first[-1] == 99  # each section's first and last step
    assert second[0] == 100 and second[-1] == 199
    assert third == [200, 250, 299]
    assert len(space_timesteps(1000, "10,10,3,2,2")) == 27  # GLIDE's fast27
    assert space_timesteps(1000, 5) == space_timesteps(1000, "5") == [0, 250, 500, 749, 999]
    assert space_timesteps(1000, [5]) == space_timesteps(1000, "5")


@pytest.mark.parametrize(
    "spec", ["ddim0", "ddimx", "ddim1", "abc", "", "0", "2000", "10,-1", "400,400,400"]
)
def test_bad_spacing_specs_are_one_line_errors(spec: str) -> None:
    with pytest.raises(ConfigError, match="bad timestep spec") as e:
        space_timesteps(1000, spec)
    assert "\n" not in str(e.value)


def test_respace_keeps_alphas_cumprod_and_recomputes_betas() -> None:
    base = named_schedule("cosine", 1000)
    s = respace(base, "ddim10")
    kept = list(range(0, 1000, 100))
    assert s.num_steps == 10 and s.num_train_steps == 1000
    assert s.timesteps.tolist() == kept
    torch.testing.assert_close(s.alphas_cumprod, base.alphas_cumprod[kept], rtol=1e-13, atol=0)
    # β'_i = 1 − ᾱ_{k_i}/ᾱ_{k_{i−1}}, β'_0 = β_0 (k_0 = 0)
    abar = base.alphas_cumprod
    assert float(s.betas[0]) == pytest.approx(float(base.betas[0]), rel=1e-13)
    assert float(s.betas[3]) == pytest.approx(1 - float(abar[300] / abar[200]), rel=1e-13)
    s27 = respace(base, "10,10,3,2,2")
    torch.testing.assert_close(
        s27.alphas_cumprod, base.alphas_cumprod[s27.timesteps], rtol=1e-13, atol=0
    )


def test_respace_refuses_a_respaced_schedule() -> None:
    s = respace(named_schedule("linear", 100), "ddim10")
    with pytest.raises(ConfigError, match="unrespaced"):
        respace(s, "5")

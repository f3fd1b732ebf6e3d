"""Parity of tessera.diffusion with diffusers' DDPMScheduler / DDIMScheduler (test-only reference).

diffusers keeps its tables in float32; to compare the *formulas* at 1e-6 and beyond, each
scheduler's ``alphas_cumprod`` (and its "one") is replaced by our float64 table after
construction, and the schedules themselves are compared separately at float32 precision.
"""

from __future__ import annotations

import pytest
import torch

from helpers.references import missing_reference

try:
    from diffusers import DDIMScheduler, DDPMScheduler
except ImportError:  # pragma: no cover - depends on the environment
    missing_reference("diffusers", module_level=True)

from tessera.diffusion import (
    Schedule,
    ddim_step,
    ddpm_step,
    named_schedule,
    q_sample,
    respace,
    v_target,
)

PRED = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}
SHAPE = (2, 3, 4, 4)


def _float64(sched: DDPMScheduler | DDIMScheduler, train: Schedule) -> None:
    sched.alphas_cumprod = train.alphas_cumprod.clone()
    sched.one = torch.tensor(1.0, dtype=torch.float64)
    sched.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)


def _ddpm(train: Schedule, prediction: str, variance: str = "fixed_small") -> DDPMScheduler:
    sched = DDPMScheduler(
        num_train_timesteps=train.num_steps,
        trained_betas=train.betas.numpy(),
        prediction_type=PRED[prediction],
        variance_type=variance,
        clip_sample=False,
    )
    _float64(sched, train)
    return sched


def _ddim(train: Schedule, prediction: str) -> DDIMScheduler:
    sched = DDIMScheduler(
        num_train_timesteps=train.num_steps,
        trained_betas=train.betas.numpy(),
        prediction_type=PRED[prediction],
        clip_sample=False,
        set_alpha_to_one=True,  # ᾱ before the first step is 1, our alphas_cumprod_prev[0]
        timestep_spacing="leading",  # 0, T/N, 2T/N, ...: our "ddimN" when N divides T
    )
    _float64(sched, train)
    return sched


def _tensors(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(SHAPE, generator=g, dtype=torch.float64),
        torch.randn(SHAPE, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize(
    ("name", "diffusers_name"), [("cosine", "squaredcos_cap_v2"), ("linear", "linear")]
)
def test_named_schedules_match(name: str, diffusers_name: str) -> None:
    ours = named_schedule(name, 1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=diffusers_name)
    # diffusers stores float32: equal to float32 precision
    torch.testing.assert_close(ref.betas.double(), ours.betas, rtol=1e-6, atol=0)
    torch.testing.assert_close(ref.alphas_cumprod.double(), ours.alphas_cumprod, rtol=2e-5, atol=0)


def test_add_noise_and_velocity_match() -> None:
    train = named_schedule("cosine", 1000)
    ref = _ddpm(train, "eps")
    x0, eps = _tensors(0)
    t = torch.tensor([0, 999])
    torch.testing.assert_close(
        q_sample(train, x0, t, eps), ref.add_noise(x0, eps, t), rtol=1e-12, atol=1e-12
    )
    torch.testing.assert_close(
        v_target(train, x0, eps, t), ref.get_velocity(x0, eps, t), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("spec", [None, "ddim50"])
def test_ddpm_step_matches(prediction: str, spec: str | None) -> None:
    train = named_schedule("cosine", 1000)
    s = train if spec is None else respace(train, spec)
    ref = _ddpm(train, prediction)
    if spec is not None:
        ref.set_timesteps(timesteps=s.timesteps.flip(0).tolist())
    for i in (s.num_steps - 1, s.num_steps // 2, 1, 0):
        x_t, out = _tensors(i)
        t_model = int(s.timesteps[i])
        # diffusers draws its noise with torch.randn(shape, generator, cpu, float64), as we do
        g_ref = torch.Generator().manual_seed(100 + i)
        want = ref.step(out, t_model, x_t, generator=g_ref).prev_sample
        noise = torch.randn(
            SHAPE, generator=torch.Generator().manual_seed(100 + i), dtype=torch.float64
        )
        got = ddpm_step(
            out, x_t, i, s, prediction=prediction, variance="fixed_small", clip_x0=0.0, noise=noise
        )
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_ddpm_learned_range_step_matches() -> None:
    train = named_schedule("cosine", 1000)
    ref = _ddpm(train, "eps", variance="learned_range")
    for i in (999, 400, 1):
        x_t, eps = _tensors(i)
        var_values = torch.rand(SHAPE, generator=torch.Generator().manual_seed(i)).double() * 2 - 1
        out = torch.cat([eps, var_values], dim=1)
        want = ref.step(out, i, x_t, generator=torch.Generator().manual_seed(7)).prev_sample
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
        got = ddpm_step(
            out, x_t, i, train, prediction="eps", variance="learned_range", clip_x0=0.0, noise=noise
        )
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_step_matches(prediction: str, eta: float) -> None:
    train = named_schedule("cosine", 1000)
    s = respace(train, "ddim50")
    ref = _ddim(train, prediction)
    ref.set_timesteps(50)
    assert ref.timesteps.flip(0).tolist() == s.timesteps.tolist()  # "leading" == "ddim50"
    for i in (49, 25, 1, 0):
        x_t, out = _tensors(i)
        noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(i), dtype=torch.float64)
        t_model = int(s.timesteps[i])
        want = ref.step(
            out, t_model, x_t, eta=eta, variance_noise=noise if eta > 0 else None
        ).prev_sample
        got = ddim_step(out, x_t, i, s, prediction=prediction, eta=eta, clip_x0=0.0, noise=noise)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_ddim_step_with_clipping_matches_glide_convention() -> None:
    """clip x̂0 and re-derive ε̂ from it: diffusers' ``use_clipped_model_output=True``."""
    train = named_schedule("linear", 1000)
    s = respace(train, "ddim20")
    ref = DDIMScheduler(
        num_train_timesteps=1000, trained_betas=train.betas.numpy(), clip_sample=True
    )
    _float64(ref, train)
    ref.set_timesteps(20)
    for i in (19, 10, 0):
        x_t, out = _tensors(i)
        out = 3 * out  # push x̂0 outside [−1, 1]
        want = ref.step(out, int(s.timesteps[i]), x_t, use_clipped_model_output=True).prev_sample
        got = ddim_step(out, x_t, i, s, prediction="eps", clip_x0=1.0)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)

"""Samplers on an exactly solvable toy, DDIM inversion, guidance and generator devices."""

from __future__ import annotations

import itertools
from unittest import mock

import pytest
import torch

from tessera.diffusion import (
    Schedule,
    classifier_free_guidance,
    ddim_invert,
    ddim_sample,
    ddim_step,
    ddpm_sample,
    named_schedule,
    randn,
    respace,
)
from tessera.diffusion.samplers import ModelFn

# -- the 1-D Gaussian toy ------------------------------------------------------------------------
# Data x0 ~ N(μ, σ²), x_t = √ᾱ x0 + √(1−ᾱ) ε. (ε, x_t) is jointly Gaussian with E[x_t] = √ᾱ μ,
# Var(x_t) = ᾱσ² + 1 − ᾱ and Cov(ε, x_t) = √(1−ᾱ), so the optimal ε-denoiser is the
# regression E[ε | x_t] = Cov/Var · (x_t − E[x_t]) = √(1−ᾱ)(x_t − √ᾱ μ)/(ᾱσ² + 1 − ᾱ).
# E[x0 | x_t] and E[v | x_t] follow linearly (x0 = (x_t − √(1−ᾱ) ε)/√ᾱ, v = √ᾱ ε − √(1−ᾱ) x0).
# With the exact denoiser, a sampler's output distribution is N(μ, σ²) up to its
# discretisation error.

MU, SIGMA = 0.3, 0.5
N_SAMPLES = 20_000
TRAIN = named_schedule("cosine", 1000)


def toy_model(prediction: str, train: Schedule = TRAIN) -> ModelFn:
    """The exact denoiser of the toy for any input shape; ``t`` are ORIGINAL training steps."""

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        abar = train.alphas_cumprod[t.cpu()].to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
        eps = (1 - abar).sqrt() * (x - abar.sqrt() * MU) / (abar * SIGMA**2 + 1 - abar)
        if prediction == "eps":
            return eps
        x0 = (x - (1 - abar).sqrt() * eps) / abar.sqrt()
        return x0 if prediction == "x0" else abar.sqrt() * eps - (1 - abar).sqrt() * x0

    return fn


S100 = respace(TRAIN, "100")  # 100 evenly spaced steps 0..999

# Tolerances (N = 20000: the standard error of the mean is σ/√N ≈ 0.0035, of the std
# σ/√(2N) ≈ 0.0025): |mean − μ| < 0.015 (≈ 4 s.e.); |std − σ| < 0.03. The std bound also
# covers the 100-step discretisation bias: the fixed_small variance β̃ is the lower bound of
# the true reverse variance, which makes 100-step ancestral samples ≈ 0.016 too narrow.
MEAN_TOL, STD_TOL = 0.015, 0.03


def _check(x: torch.Tensor) -> None:
    assert abs(float(x.mean()) - MU) < MEAN_TOL, float(x.mean())
    assert abs(float(x.std()) - SIGMA) < STD_TOL, float(x.std())


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddpm_ancestral_reproduces_the_toy_distribution(prediction: str) -> None:
    g = torch.Generator().manual_seed(10)
    x = ddpm_sample(
        toy_model(prediction),
        S100,
        (N_SAMPLES,),
        prediction=prediction,
        variance="fixed_small",
        clip_x0=0.0,
        generator=g,
        dtype=torch.float64,
    )
    _check(x)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_reproduces_the_toy_distribution(prediction: str, eta: float) -> None:
    g = torch.Generator().manual_seed(11)
    x = ddim_sample(
        toy_model(prediction),
        S100,
        (N_SAMPLES,),
        prediction=prediction,
        eta=eta,
        clip_x0=0.0,
        generator=g,
        dtype=torch.float64,
    )
    _check(x)


def test_samplers_feed_the_model_original_timesteps_and_use_the_generator() -> None:
    seen: list[int] = []

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert t.dtype == torch.long and t.shape == (x.shape[0],)
        seen.append(int(t[0]))
        return toy_model("eps")(x, t)

    s = respace(TRAIN, "ddim10")
    a = ddim_sample(fn, s, (4, 2), prediction="eps", generator=torch.Generator().manual_seed(0))
    assert seen == list(range(900, -1, -100))
    b = ddim_sample(fn, s, (4, 2), prediction="eps", generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == torch.float32
    c = ddpm_sample(
        fn, s, (4, 2), prediction="eps", variance="fixed_large", generator=torch.Generator()
    )
    assert c.shape == (4, 2) and torch.isfinite(c).all()


def test_ddim_step_ignores_learned_variance_channels() -> None:
    s = respace(TRAIN, "ddim10")
    x = torch.randn(2, 3, 4, 4)
    eps = torch.randn(2, 3, 4, 4)
    with_var = torch.cat([eps, torch.randn(2, 3, 4, 4)], dim=1)
    a = ddim_step(eps, x, 5, s, prediction="eps")
    b = ddim_step(with_var, x, 5, s, prediction="eps", variance="learned_range")
    assert torch.equal(a, b)


# -- DDIM inversion ------------------------------------------------------------------------------
# The η = 0 ODE is integrated with one explicit step per interval each way, so inverting and
# regenerating is exact only as the steps → 0: the error is first order (halves when the step
# count doubles). Bounds measured on this toy: max |error| ≈ 0.056 at 100 steps (cosine),
# ≈ 0.006 at 1000.


@pytest.mark.parametrize("shape", [(2000,), (8, 3, 8, 8)])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_inversion_then_ddim_regenerates_the_input(
    prediction: str, shape: tuple[int, ...]
) -> None:
    g = torch.Generator().manual_seed(12)
    x0 = MU + SIGMA * torch.randn(shape, generator=g, dtype=torch.float64)
    errors = []
    for spec in ("ddim50", "ddim200"):
        s = respace(TRAIN, spec)
        model = toy_model(prediction)
        x_T = ddim_invert(model, s, x0, prediction=prediction)
        assert x_T.shape == x0.shape
        assert abs(float(x_T.std()) - 1.0) < 0.06  # the latent is (close to) standard normal
        rec = ddim_sample(model, s, shape, prediction=prediction, x_T=x_T, clip_x0=0.0)
        errors.append(float((rec - x0).abs().max()))
    assert errors[0] < 0.15 and errors[1] < 0.04, errors
    assert errors[1] < errors[0] / 3, errors  # first-order convergence: ≈ 1/4 for 4× steps


# -- classifier-free guidance --------------------------------------------------------------------


def test_classifier_free_guidance_calls_once_and_mixes() -> None:
    calls: list[tuple[torch.Size, torch.Tensor]] = []
    cond_eps, uncond_eps = torch.full((2, 3, 4, 4), 2.0), torch.full((2, 3, 4, 4), 0.5)
    cond_var, uncond_var = torch.full((2, 3, 4, 4), 0.25), torch.full((2, 3, 4, 4), -0.75)

    def pair(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append((x.shape, t.clone()))
        cond = torch.cat([cond_eps, cond_var], dim=1)
        uncond = torch.cat([uncond_eps, uncond_var], dim=1)
        return torch.cat([cond, uncond])

    fn = classifier_free_guidance(pair, 3.0, channels=3)
    out = fn(torch.zeros(2, 3, 4, 4), torch.tensor([7, 7]))
    assert len(calls) == 1 and calls[0][0] == (4, 3, 4, 4)
    assert calls[0][1].tolist() == [7, 7, 7, 7]
    torch.testing.assert_close(out[:, :3], uncond_eps + 3.0 * (cond_eps - uncond_eps))
    torch.testing.assert_close(out[:, 3:], cond_var)  # the conditional half's variance
    one = classifier_free_guidance(pair, 1.0, channels=3)(torch.zeros(2, 3, 4, 4), torch.ones(2))
    torch.testing.assert_close(one, torch.cat([cond_eps, cond_var], dim=1))


# -- generators and devices ----------------------------------------------------------------------

GEN_MSG = "generator on cpu cannot draw into cuda tensors; create it with torch.Generator"


def test_randn_refuses_a_generator_on_another_device() -> None:
    # torch.device("cuda") needs no GPU; the check raises before any CUDA call
    with mock.patch("torch.randn", side_effect=AssertionError("drew")):
        with pytest.raises(ValueError, match=GEN_MSG) as e:
            randn((2, 3), generator=torch.Generator(), device="cuda", dtype=torch.float32)
        with pytest.raises(ValueError, match=GEN_MSG):
            ddim_sample(
                toy_model("eps"),
                S100,
                (2,),
                prediction="eps",
                generator=torch.Generator(),
                device="cuda",
            )
    assert "\n" not in str(e.value)
    x = randn((2, 3), generator=torch.Generator().manual_seed(0), device="cpu", dtype=torch.float64)
    assert x.dtype == torch.float64
    want = torch.randn(2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(x, want)


def test_progress_bars_do_not_change_results() -> None:
    s = respace(TRAIN, "ddim5")
    x0 = torch.full((2, 1), 0.1)
    kw = {"prediction": "eps", "generator": torch.Generator().manual_seed(3)}
    a = ddim_sample(toy_model("eps"), s, (2, 1), progress=True, **kw)
    kw["generator"] = torch.Generator().manual_seed(3)
    assert torch.equal(a, ddim_sample(toy_model("eps"), s, (2, 1), **kw))
    b = ddpm_sample(toy_model("eps"), s, (2, 1), variance="fixed_small", progress=True, **kw)
    assert torch.isfinite(b).all()
    assert torch.isfinite(
        ddim_invert(toy_model("eps"), s, x0, prediction="eps", progress=True)
    ).all()


# -- inpainting (RePaint) ------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "resample", "jump"), [(6, 1, 1), (6, 2, 2), (10, 3, 1), (7, 2, 3)])
def test_repaint_walks_down_with_its_jumps(n: int, resample: int, jump: int) -> None:
    from tessera.diffusion import repaint_levels

    levels = repaint_levels(n, resample, jump)
    assert levels[0] == n - 1 and levels[-1] == -1 and min(levels) == -1
    steps = [b - a for a, b in itertools.pairwise(levels)]
    assert set(steps) <= {-1, 1}
    ups = steps.count(1)
    assert ups == (resample - 1) * jump * len(range(0, n - jump, jump))
    assert steps.count(-1) == n + ups  # every re-noised level is denoised again


@pytest.mark.parametrize(("resample", "eta"), [(1, 1.0), (2, 0.0)])
def test_repaint_keeps_the_known_region_and_fills_the_masked_one(resample: int, eta: float):
    """An oracle that predicts x0 = 0.7 everywhere: the masked half comes out 0.7, the known
    half is the known image exactly, whatever the noise and the jumps."""
    from tessera.diffusion import repaint_sample

    s = respace(TRAIN, "8")

    def oracle(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, 0.7)

    known = torch.linspace(-1, 1, 2 * 3 * 4 * 4).reshape(2, 3, 4, 4)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., 2:] = 1
    g = torch.Generator().manual_seed(0)
    x = repaint_sample(
        oracle, s, known, mask, prediction="x0", eta=eta, resample=resample, jump=2, generator=g
    )
    assert torch.equal(x[..., :2], known[..., :2])
    torch.testing.assert_close(x[..., 2:], torch.full_like(x[..., 2:], 0.7))
    again = repaint_sample(
        oracle, s, known, mask, prediction="x0", eta=eta, resample=resample, jump=2,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert torch.equal(again, x)

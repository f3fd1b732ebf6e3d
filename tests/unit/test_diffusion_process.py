"""Forward process, posterior, parameterisation round trips, p_θ variances and the losses."""

from __future__ import annotations

import math

import pytest
import torch

from tessera.config.diffusion import DiffusionConfig
from tessera.diffusion import (
    diffusion_loss,
    discretized_gaussian_log_likelihood,
    eps_from_v,
    eps_from_x0,
    extract,
    loss_weight,
    named_schedule,
    normal_kl,
    p_mean_variance,
    prediction_target,
    q_posterior,
    q_sample,
    snr,
    split_output,
    v_target,
    x0_from_eps,
    x0_from_v,
)

S = named_schedule("cosine", 1000)


def _data(seed: int = 0, shape: tuple[int, ...] = (6, 3, 4, 4)) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 998, 999])[: shape[0]]
    return x0, eps, t


def test_extract_broadcasts_and_casts() -> None:
    x = torch.zeros(3, 2, 5, dtype=torch.float32)
    out = extract(S.alphas_cumprod, torch.tensor([0, 5, 999]), x)
    assert out.shape == (3, 1, 1) and out.dtype == torch.float32
    assert float(out[1]) == pytest.approx(float(S.alphas_cumprod[5]), rel=1e-7)


def test_q_sample_is_ddpm_eq4() -> None:
    x0, eps, t = _data()
    xt = q_sample(S, x0, t, eps)
    for b in range(len(t)):
        a = float(S.alphas_cumprod[t[b]])
        torch.testing.assert_close(xt[b], math.sqrt(a) * x0[b] + math.sqrt(1 - a) * eps[b])


def test_q_posterior_matches_bayes_rule() -> None:
    """q(x_{t−1}|x_t, x0) ∝ N(x_t; √α_t x_{t−1}, β_t) N(x_{t−1}; √ᾱ_{t−1} x0, 1 − ᾱ_{t−1}):
    precision α_t/β_t + 1/(1 − ᾱ_{t−1}), mean (√α_t x_t/β_t + √ᾱ_{t−1} x0/(1 − ᾱ_{t−1}))/prec."""
    x0, eps, t = _data(1)
    xt = q_sample(S, x0, t, eps)
    mean, var, log_var = q_posterior(S, x0, xt, t)
    for b in range(1, len(t)):  # t > 0
        i = int(t[b])
        beta = float(S.betas[i])
        abar_prev = float(S.alphas_cumprod[i - 1])
        prec = (1 - beta) / beta + 1 / (1 - abar_prev)
        want = math.sqrt(1 - beta) * xt[b] / beta + math.sqrt(abar_prev) * x0[b] / (1 - abar_prev)
        torch.testing.assert_close(mean[b], want / prec, rtol=1e-9, atol=1e-9)
        assert float(var[b]) == pytest.approx(1 / prec, rel=1e-9)
        assert float(log_var[b]) == pytest.approx(math.log(1 / prec), rel=1e-9)
    # t = 0: the posterior mean is x0 itself, the variance 0 and the log clipped to log β̃_1
    torch.testing.assert_close(mean[0], x0[0], rtol=1e-12, atol=1e-12)
    assert float(var[0]) == 0.0
    assert float(log_var[0]) == pytest.approx(math.log(float(S.posterior_variance[1])))


def test_eps_x0_v_round_trips_float64() -> None:
    x0, eps, t = _data(2)
    xt = q_sample(S, x0, t, eps)
    v = v_target(S, x0, eps, t)
    tol = {"rtol": 0, "atol": 1e-10}
    torch.testing.assert_close(x0_from_v(S, xt, t, v), x0, **tol)
    torch.testing.assert_close(eps_from_v(S, xt, t, v), eps, **tol)
    t_mid = t[1:5]  # ε from x0 divides by √(1/ᾱ − 1): exact away from ᾱ → 1 and ᾱ → 0
    torch.testing.assert_close(x0_from_eps(S, xt[1:5], t_mid, eps[1:5]), x0[1:5], **tol)
    torch.testing.assert_close(eps_from_x0(S, xt[1:5], t_mid, x0[1:5]), eps[1:5], **tol)
    assert prediction_target("eps", S, x0, eps, t) is eps
    assert prediction_target("x0", S, x0, eps, t) is x0
    torch.testing.assert_close(prediction_target("v", S, x0, eps, t), v)


def test_split_output() -> None:
    out = torch.randn(2, 6, 3, 3)
    pred, var = split_output(out, "learned_range")
    assert pred.shape == (2, 3, 3, 3) and torch.equal(var, out[:, 3:])
    assert split_output(out, "fixed_small") == (out, None)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_p_mean_variance_with_the_true_target_is_the_posterior(prediction: str) -> None:
    x0, eps, t = _data(3)
    xt = q_sample(S, x0, t, eps)
    out = prediction_target(prediction, S, x0, eps, t)
    p = p_mean_variance(S, out, xt, t, prediction=prediction, variance="fixed_small")
    mean, var, _ = q_posterior(S, x0, xt, t)
    sl = slice(1, 5)  # away from ᾱ ≈ 1 / ᾱ ≈ 0 where x0 ↔ ε amplifies rounding
    torch.testing.assert_close(p["mean"][sl], mean[sl], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p["x0"][sl], x0[sl], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p["eps"][sl], eps[sl], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(p["variance"], var)


def test_p_mean_variance_clips_x0_and_recomputes_eps() -> None:
    x0, eps, t = _data(4)
    xt = q_sample(S, x0, t, eps)
    p = p_mean_variance(
        S, 3 * x0, xt, t, prediction="x0", variance="fixed_small", clip_x0=1.0
    )  # predictions outside [−1, 1]
    assert p["x0"].abs().max() <= 1.0
    torch.testing.assert_close(p["x0"], (3 * x0).clamp(-1, 1))
    sl = slice(1, 5)
    torch.testing.assert_close(
        x0_from_eps(S, xt[sl], t[sl], p["eps"][sl]), p["x0"][sl], rtol=1e-9, atol=1e-9
    )


def test_fixed_and_learned_variances() -> None:
    x0, eps, t = _data(5)
    xt = q_sample(S, x0, t, eps)
    large = p_mean_variance(S, eps, xt, t, prediction="eps", variance="fixed_large")
    betas = S.betas[t].clone()
    betas[0] = S.posterior_variance[1]  # guided-diffusion: β̃_1 at t = 0
    torch.testing.assert_close(large["variance"].flatten(), betas)
    # learned_range v = +1 → β_t, v = −1 → β̃_t (clipped log), v = 0 → the geometric mean
    for v, want in [
        (1.0, torch.log(S.betas[t])),
        (-1.0, S.posterior_log_variance_clipped[t]),
        (0.0, 0.5 * (torch.log(S.betas[t]) + S.posterior_log_variance_clipped[t])),
    ]:
        out = torch.cat([eps, torch.full_like(eps, v)], dim=1)
        p = p_mean_variance(S, out, xt, t, prediction="eps", variance="learned_range")
        torch.testing.assert_close(p["log_variance"][:, 0, 0, 0], want)


def test_learned_range_stays_finite_for_huge_outputs() -> None:
    x0, eps, t = _data(6)
    xt = q_sample(S, x0, t, eps).float()
    for big in (1e4, -1e4):
        out = torch.full((6, 6, 4, 4), big)
        p = p_mean_variance(S, out, xt, t, prediction="eps", variance="learned_range", clip_x0=1.0)
        for k in ("mean", "variance", "log_variance", "x0", "eps"):
            assert torch.isfinite(p[k]).all(), k


# -- losses --------------------------------------------------------------------------------------


def test_snr_and_min_snr_weights_by_hand() -> None:
    t = torch.tensor([0, 300, 600, 999])
    abar = S.alphas_cumprod[t]
    r = abar / (1 - abar)
    torch.testing.assert_close(snr(S, t), r.float())
    gamma = 5.0
    m = torch.clamp(r, max=gamma)
    want = {"eps": m / r, "x0": m, "v": m / (r + 1)}
    for prediction, w in want.items():
        got = loss_weight(S, t, prediction=prediction, weighting="min_snr", gamma=gamma)
        torch.testing.assert_close(got, w.float())
    # at t = 0 the SNR is huge: ε weight γ/SNR, small; at t = 999 SNR < γ: ε weight 1
    r0 = float(r[0])
    got = loss_weight(S, t, prediction="eps", weighting="min_snr")
    assert float(got[0]) == pytest.approx(5.0 / r0, rel=1e-6) and float(got[3]) == 1.0
    none = loss_weight(S, t, prediction="v", weighting="none")
    assert torch.equal(none, torch.ones(4))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weighted_mse_equals_clipped_snr_times_x0_error(prediction: str) -> None:
    """w · ‖target − prediction‖² = min(SNR, γ) · ‖x0 − x̂0‖² for every parameterisation."""
    x0, eps, t = _data(7)
    t = t[1:5]
    x0, eps = x0[1:5], eps[1:5]
    xt = q_sample(S, x0, t, eps)
    x0_hat = x0 + 0.1 * torch.randn_like(x0)
    eps_hat = eps_from_x0(S, xt, t, x0_hat)
    pred = prediction_target(prediction, S, x0_hat, eps_hat, t)
    target = prediction_target(prediction, S, x0, eps, t)
    w = loss_weight(S, t, prediction=prediction, weighting="min_snr").double()
    lhs = w * ((target - pred) ** 2).mean(dim=(1, 2, 3))
    r = S.alphas_cumprod[t] / (1 - S.alphas_cumprod[t])
    rhs = torch.clamp(r, max=5.0) * ((x0 - x0_hat) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(lhs, rhs, rtol=1e-5, atol=0)


def test_normal_kl_and_discretized_likelihood() -> None:
    m1, lv1, m2, lv2 = (torch.tensor(v, dtype=torch.float64) for v in (0.3, -1.0, -0.2, 0.5))
    s1, s2 = math.exp(0.5 * -1.0), math.exp(0.5 * 0.5)
    want = math.log(s2 / s1) + (s1**2 + 0.5**2) / (2 * s2**2) - 0.5
    assert float(normal_kl(m1, lv1, m2, lv2)) == pytest.approx(want, rel=1e-12)
    assert float(normal_kl(m1, lv1, m1, lv1)) == 0.0
    # the 256 bins of a wide Gaussian sum to one
    x = torch.linspace(-1, 1, 256, dtype=torch.float64)
    ll = discretized_gaussian_log_likelihood(
        x, means=torch.zeros(256, dtype=torch.float64), log_scales=torch.zeros(256).double()
    )
    assert float(ll.exp().sum()) == pytest.approx(1.0, abs=1e-3)


def _loss_inputs(cfg: DiffusionConfig, out_value: float | None = None) -> dict:
    x0, eps, t = _data(8)
    x0, eps = x0.float(), eps.float()
    xt = q_sample(S, x0, t, eps)
    c = x0.shape[1] * cfg.out_channels_factor
    if out_value is None:
        out = torch.randn(x0.shape[0], c, *x0.shape[2:], requires_grad=True)
    else:
        out = torch.full((x0.shape[0], c, *x0.shape[2:]), out_value, requires_grad=True)
    return {"output": out, "x0": x0, "x_t": xt, "t": t, "noise": eps, "s": S, "cfg": cfg}


def test_simple_loss_is_the_weighted_mse() -> None:
    cfg = DiffusionConfig(prediction="v", loss_weighting="min_snr")
    kw = _loss_inputs(cfg)
    loss, terms = diffusion_loss(**kw)
    target = v_target(S, kw["x0"], kw["noise"], kw["t"])
    mse = ((target - kw["output"]) ** 2).mean(dim=(1, 2, 3))
    w = loss_weight(S, kw["t"], prediction="v", weighting="min_snr")
    torch.testing.assert_close(loss, w * mse)
    assert set(terms) == {"mse"} and loss.shape == (6,)


def test_hybrid_loss_trains_only_the_variance_through_vb() -> None:
    cfg = DiffusionConfig(variance="learned_range", vb_weight=0.001)
    kw = _loss_inputs(cfg)
    loss, terms = diffusion_loss(**kw)
    assert set(terms) == {"mse", "vb"} and torch.isfinite(loss).all()
    torch.testing.assert_close(loss, terms["mse"] + 0.001 * 1000 * terms["vb"])
    # the vb term alone sends no gradient to the prediction channels (stop-gradient on μ)
    terms["vb"].sum().backward()
    grad = kw["output"].grad
    assert torch.count_nonzero(grad[:, :3]) == 0 and torch.count_nonzero(grad[:, 3:]) > 0


@pytest.mark.parametrize("big", [1e4, -1e4])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_hybrid_loss_is_finite_for_huge_outputs(big: float, prediction: str) -> None:
    cfg = DiffusionConfig(variance="learned_range", prediction=prediction)
    kw = _loss_inputs(cfg, out_value=big)
    loss, terms = diffusion_loss(**kw)
    assert torch.isfinite(loss).all() and torch.isfinite(terms["vb"]).all()
    loss.sum().backward()
    assert torch.isfinite(kw["output"].grad).all()


@pytest.mark.parametrize("value", [1.5, -1.5, 4.0])
def test_a_variance_output_outside_the_range_gets_a_gradient_back(value: float) -> None:
    """A learned-range output past ±1 must still feel the variational term (a clamp at ±1 in
    the loss gave it a zero gradient, so it could never come back); sampling still clamps."""
    cfg = DiffusionConfig(variance="learned_range")
    kw = _loss_inputs(cfg, out_value=value)
    _, terms = diffusion_loss(**kw)
    terms["vb"].sum().backward()
    grad = kw["output"].grad[:, 3:]  # the variance channels
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    x0, eps, t = _data(8)
    xt = q_sample(S, x0.float(), t, eps.float())
    p = p_mean_variance(S, kw["output"].detach(), xt, t, prediction="eps", variance="learned_range")
    ends = p_mean_variance(
        S, kw["output"].detach().clamp(-1, 1), xt, t, prediction="eps", variance="learned_range"
    )
    torch.testing.assert_close(p["log_variance"], ends["log_variance"])

"""The relaxed-ELB terms of the dVAE against values worked out by hand (pure functions)."""

import math

import pytest
import torch

from tessera.data.images import psnr
from tessera.vae.losses import codebook_stats, kl_to_uniform, logit_laplace_nll


def _nll_by_hand(x: float, mu: float, b: float) -> float:
    """-log of p(x) = exp(-|logit(x) - mu| / b) / (2 b x (1 - x)), straight from the paper."""
    logit = math.log(x / (1 - x))
    density = math.exp(-abs(logit - mu) / b) / (2 * b * x * (1 - x))
    return -math.log(density)


@pytest.mark.parametrize(
    ("x", "mu", "b"),
    [(0.5, 0.0, 1.0), (0.25, 1.0, 0.5), (0.9, -2.0, 3.0), (0.1, -2.1972245773, 0.05)],
)
def test_logit_laplace_nll_matches_the_density(x, mu, b):
    got = logit_laplace_nll(
        torch.tensor(x, dtype=torch.float64),
        torch.tensor(mu, dtype=torch.float64),
        torch.tensor(math.log(b), dtype=torch.float64),
    )
    assert float(got) == pytest.approx(_nll_by_hand(x, mu, b), rel=1e-12, abs=1e-12)


def test_logit_laplace_nll_closed_form_at_the_centre():
    # x = 1/2, mu = 0, b = 1: p = 1 / (2 * 1/4) = 2, so the NLL is -log 2.
    got = logit_laplace_nll(torch.tensor(0.5), torch.tensor(0.0), torch.tensor(0.0))
    assert float(got) == pytest.approx(-math.log(2.0), abs=1e-7)


@pytest.mark.parametrize(("mu", "b"), [(0.0, 0.5), (0.3, 0.7), (-1.0, 0.25), (1.5, 0.9)])
def test_logit_laplace_density_integrates_to_one(mu, b):
    n = 400_000  # midpoint rule on (0, 1); b < 1 keeps the density bounded at both ends
    x = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    nll = logit_laplace_nll(x, torch.full_like(x, mu), torch.full_like(x, math.log(b)))
    assert float(torch.exp(-nll).sum() / n) == pytest.approx(1.0, abs=2e-3)


def test_logit_laplace_nll_is_smallest_at_the_location_and_has_gradients():
    x = torch.full((5,), 0.3, dtype=torch.float64)
    mu = torch.tensor([-2.0, -1.0, math.log(0.3 / 0.7), 0.0, 1.0], dtype=torch.float64)
    mu.requires_grad_(True)
    ln_b = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    nll = logit_laplace_nll(x, mu, ln_b)
    assert int(nll.argmin()) == 2
    nll.sum().backward()
    assert torch.isfinite(mu.grad).all() and torch.isfinite(ln_b.grad).all()


def test_kl_to_uniform_is_zero_for_uniform_and_log_k_for_one_hot():
    k = 16
    uniform = torch.zeros(2, k, 3, 3)
    assert torch.allclose(kl_to_uniform(uniform), torch.zeros(2, 3, 3), atol=1e-6)
    one_hot = torch.full((2, k, 3, 3), -1e4)
    one_hot[:, 5] = 0.0
    assert torch.allclose(kl_to_uniform(one_hot), torch.full((2, 3, 3), math.log(k)), atol=1e-5)


def test_kl_to_uniform_hand_value_and_dim():
    # q = (1/4, 3/4): KL = 1/4 log 1/4 + 3/4 log 3/4 + log 2.
    want = 0.25 * math.log(0.25) + 0.75 * math.log(0.75) + math.log(2)
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert float(kl_to_uniform(logits, dim=1)[0]) == pytest.approx(want, abs=1e-6)
    assert float(kl_to_uniform(logits.T, dim=0)[0]) == pytest.approx(want, abs=1e-6)
    assert (kl_to_uniform(torch.randn(4, 32, 2, 2)) >= -1e-6).all()


def test_psnr_of_known_mse():
    a = torch.zeros(3, 3, 8, 8)
    b = torch.full((3, 3, 8, 8), 0.1)  # MSE 0.01 -> 20 dB
    b[1] = 0.01  # MSE 1e-4 -> 40 dB
    b[2] = 0.0
    b[2, :, :4] = 1.0  # half the pixels off by 1: MSE 0.5 -> 10 log10(2) dB
    got = psnr(a, b)
    assert got.shape == (3,)
    assert torch.allclose(got, torch.tensor([20.0, 40.0, 10 * math.log10(2)]), atol=1e-4)
    assert torch.isinf(psnr(a, a)).all()  # identical images: infinitely many dB


def _peaked(codes: torch.Tensor, k: int) -> torch.Tensor:
    """(B, h, w) codes -> (B, K, h, w) logits whose softmax is one-hot to float precision."""
    return torch.nn.functional.one_hot(codes, k).permute(0, 3, 1, 2).float() * 100.0


def test_codebook_stats_uniform_use():
    k = 16
    codes = torch.arange(2 * k).reshape(2, 4, 4) % k  # every code used exactly twice
    perplexity, dead = codebook_stats(_peaked(codes, k))
    assert perplexity == pytest.approx(k, rel=1e-4)
    assert dead == 0


def test_codebook_stats_one_code_and_partial_use():
    k = 16
    perplexity, dead = codebook_stats(_peaked(torch.full((2, 4, 4), 3), k))
    assert perplexity == pytest.approx(1.0, rel=1e-4)
    assert dead == k - 1
    half = torch.arange(32).reshape(2, 4, 4) % 8  # codes 0..7, evenly
    perplexity, dead = codebook_stats(_peaked(half, k))
    assert perplexity == pytest.approx(8.0, rel=1e-4)
    assert dead == 8


def test_codebook_stats_uses_the_soft_distribution_for_perplexity():
    # Uniform logits everywhere: perplexity K (soft), but argmax picks code 0 only.
    perplexity, dead = codebook_stats(torch.zeros(1, 8, 2, 2))
    assert perplexity == pytest.approx(8.0, rel=1e-5)
    assert dead == 7

"""The relaxed evidence lower bound of the dVAE (paper §2.1, App. A): pure functions."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def logit_laplace_nll(x: torch.Tensor, mu: torch.Tensor, ln_b: torch.Tensor) -> torch.Tensor:
    """Per-element negative log-likelihood (nats) of ``x`` in (0, 1) under the logit-Laplace
    distribution with location ``mu`` and log-scale ``ln_b``:

        p(x | mu, b) = exp(-|logit(x) - mu| / b) / (2 b x (1 - x))

    ``x`` must already be mapped into [eps, 1 - eps] (:func:`tessera.vae.pixels.map_pixels`).
    """
    logit = torch.log(x) - torch.log1p(-x)
    return (
        (logit - mu).abs() * torch.exp(-ln_b)
        + ln_b
        + math.log(2.0)
        + torch.log(x)
        + torch.log1p(-x)
    )


def kl_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(q || uniform) in nats per position, q = softmax(logits) over ``dim`` of size K:
    sum_k q_k log q_k + log K (0 for a uniform q, log K for a one-hot q)."""
    log_q = F.log_softmax(logits.float(), dim=dim)
    return (log_q.exp() * log_q).sum(dim) + math.log(logits.shape[dim])


def kl_marginal_to_uniform(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """KL(q_bar || uniform) in nats, q_bar = the batch-average of softmax(logits) over every
    position (a scalar): 0 when the batch uses every code equally, log K when it uses one.

    Unlike :func:`kl_to_uniform` it does not push each position's posterior towards uniform,
    only the codebook's overall use: codes can be sharp (what argmax decoding sees) while the
    book stays alive.
    """
    q = F.softmax(logits.float(), dim=dim).movedim(dim, -1).reshape(-1, logits.shape[dim])
    q_bar = q.mean(0)
    return (q_bar * torch.log(q_bar.clamp_min(1e-12))).sum() + math.log(logits.shape[dim])


def codebook_stats(logits: torch.Tensor) -> tuple[float, int]:
    """(perplexity of the batch-average code distribution, codes never chosen by argmax).

    logits: ``(B, K, h, w)``. Perplexity is exp(entropy) of the mean softmax over all
    positions: K when every code is used equally, 1 when one code takes everything.
    """
    k = logits.shape[1]
    probs = F.softmax(logits.float(), dim=1).mean((0, 2, 3))
    perplexity = float(torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum()))
    used = torch.bincount(logits.argmax(1).flatten(), minlength=k) > 0
    return perplexity, int((~used).sum())

"""Sampling the unCLIP priors: caption ids + CLIP text embedding z_t -> CLIP image embedding
z_i (unit norm). :func:`sample_prior` dispatches on the prior's type, so a pipeline calls
one function for either prior.

Diffusion prior: DDIM (η = 0 by default) over the training schedule respaced to ``steps``
(paper: 64 steps of Analytic-DPM), classifier-free guidance in one batched call per step,
and "we generate two samples of z_i and select the one with a higher dot product with z_t".

AR prior: the quantised dot-product token is drawn from the top half of its predicted
distribution ("sampling with the top 50% of the dot product" was best in the paper's sweep),
then the component tokens in order (temperature, optional top-k), decoded to z_i (bucket
centres -> PCA inverse -> unit norm). Best-of-``candidates`` applies to it as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.diffusion import ModelFn, classifier_free_guidance, ddim_sample
from tessera.models.prior import ARPrior, DiffusionPrior
from tessera.sampling.filters import filter_logits, sample
from tessera.sampling.unclip import _inference, sampling_schedule

__all__ = ["best_of", "prior_fn", "sample_prior", "top_half"]


def best_of(candidates: torch.Tensor, z_t: torch.Tensor) -> torch.Tensor:
    """candidates (C, B, D), z_t (B, D) -> (B, D): per row the candidate with the largest
    dot product with z_t (the first on ties)."""
    score = (candidates * F.normalize(z_t.float(), dim=-1)[None]).sum(-1)  # (C, B)
    best = score.argmax(0)  # (B,)
    return candidates[best, torch.arange(candidates.shape[1], device=candidates.device)]


def top_half(logits: torch.Tensor, floor: float = 0.5) -> torch.Tensor:
    """Keep the buckets (ordered by value, low to high) at or above the ``floor`` quantile of
    the distribution softmax(logits) (B, V): those whose cumulative mass up to and including
    them exceeds ``floor`` (the bucket holding the median and every higher one); the rest
    become -inf."""
    probs = torch.softmax(logits.float(), dim=-1)
    keep = probs.cumsum(-1) > floor
    keep[:, -1] = True  # rounding: the top bucket always survives
    return logits.float().masked_fill(~keep, float("-inf"))


def prior_fn(
    prior: DiffusionPrior,
    text: torch.Tensor,
    z_t: torch.Tensor,
    *,
    guidance: float = 1.0,
) -> ModelFn:
    """The diffusion prior as ``model_fn(x_t, t)`` -> x0 prediction (B, D), conditioned on
    ``text`` (B, L) and ``z_t`` (B, D); with ``guidance`` != 1, classifier-free guidance
    against the dropped caption and null z_t in one batched call."""

    def cond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = prior(x, t, text=text, z_t=z_t)
        return out.float()

    if guidance == 1.0:
        return cond
    b = z_t.shape[0]
    text2, z_t2 = torch.cat([text, text]), torch.cat([z_t, z_t])
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])

    def pair(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = prior(x, t, text=text2, z_t=z_t2, drop=drop)
        return out.float()

    return classifier_free_guidance(pair, guidance, channels=z_t.shape[1])


def _sample_diffusion(
    prior: DiffusionPrior,
    text: torch.Tensor,
    z_t: torch.Tensor,
    *,
    steps: int,
    guidance: float,
    generator: torch.Generator | None,
    eta: float,
    device: torch.device,
) -> torch.Tensor:
    cfg = prior.config
    s = sampling_schedule(cfg.diffusion, steps)
    x = ddim_sample(
        prior_fn(prior, text, z_t, guidance=guidance),
        s,
        (z_t.shape[0], cfg.clip_dim),
        prediction=cfg.diffusion.prediction,
        variance=cfg.diffusion.variance,
        eta=eta,
        clip_x0=cfg.diffusion.clip_x0,
        generator=generator,
        device=device,
    )
    return prior.embedding(x)  # unit norm, or CLIP's unnormalised embedding (Karlo)


def _ar_logits(
    prior: ARPrior,
    text: torch.Tensor,
    z_t: torch.Tensor,
    dot: torch.Tensor | None,
    comps: torch.Tensor | None,
    guidance: float,
) -> torch.Tensor:
    """The next token's logits (dot token when ``dot`` is None, else the next component),
    guided against the dropped condition when ``guidance`` != 1 (one batched call)."""
    if guidance == 1.0:
        dot_logits, comp_logits = prior(text, z_t, dot, comps)
        first: torch.Tensor = dot_logits if dot is None else comp_logits[:, -1]
        return first.float()
    b = z_t.shape[0]
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])

    def two(x: torch.Tensor | None) -> torch.Tensor | None:
        return None if x is None else torch.cat([x, x])

    dot_logits, comp_logits = prior(two(text), two(z_t), two(dot), two(comps), drop=drop)
    out: torch.Tensor = (dot_logits if dot is None else comp_logits[:, -1]).float()
    cond, uncond = out.chunk(2)
    return uncond + guidance * (cond - uncond)


def _sample_ar(
    prior: ARPrior,
    text: torch.Tensor,
    z_t: torch.Tensor,
    *,
    guidance: float,
    generator: torch.Generator | None,
    temperature: float,
    top_k: int,
    dot_floor: float,
) -> torch.Tensor:
    k = prior.components
    dot = sample(top_half(_ar_logits(prior, text, z_t, None, None, guidance), dot_floor), generator)
    comps = torch.zeros(z_t.shape[0], 0, dtype=torch.long, device=z_t.device)
    for _ in range(k):  # no KV cache: the sequences are short (L + 2 + k)
        logits = _ar_logits(prior, text, z_t, dot, comps, guidance)
        nxt = sample(filter_logits(logits, temperature=temperature, k=top_k), generator)
        comps = torch.cat([comps, nxt[:, None]], dim=1)
    return prior.decode(comps)


def sample_prior(
    prior: nn.Module,
    text_ids: torch.Tensor,
    z_t: torch.Tensor,
    *,
    steps: int = 64,
    guidance: float = 1.0,
    candidates: int = 2,
    generator: torch.Generator | None = None,
    eta: float = 0.0,
    temperature: float = 1.0,
    top_k: int = 0,
    dot_floor: float = 0.5,
    autocast: bool = False,
) -> torch.Tensor:
    """Caption ids (B, L) and CLIP text embeddings z_t (B, D) -> sampled CLIP image
    embeddings z_i (B, D), unit norm, float32, on the prior's device.

    Either prior: ``candidates`` draws per caption, keeping the one with the larger
    z_i . z_t (paper: 2), and ``guidance`` (1: none; "guiding the prior hurt"). Diffusion
    prior: DDIM with ``steps`` respaced steps and ``eta``. AR prior: ``temperature`` and
    ``top_k`` (0: all) for the components, the dot-product token from above the
    ``dot_floor`` quantile of its distribution (0.5: the top half); ``steps`` and ``eta``
    do not apply. Every draw comes from ``generator`` (on the prior's device).
    """
    if candidates < 1:
        raise ValueError(f"candidates must be >= 1, got {candidates}")
    with _inference(prior, autocast) as device:
        text = text_ids.to(device)
        z_t = z_t.to(device).float()
        b = z_t.shape[0]
        # the candidates of every caption in one batch: (C * B, ...), candidate-major
        text_c, z_t_c = text.repeat(candidates, 1), z_t.repeat(candidates, 1)
        if isinstance(prior, DiffusionPrior):
            z = _sample_diffusion(
                prior,
                text_c,
                z_t_c,
                steps=steps,
                guidance=guidance,
                generator=generator,
                eta=eta,
                device=device,
            )
        elif isinstance(prior, ARPrior):
            z = _sample_ar(
                prior,
                text_c,
                z_t_c,
                guidance=guidance,
                generator=generator,
                temperature=temperature,
                top_k=top_k,
                dot_floor=dot_floor,
            )
        else:
            raise TypeError(f"not a prior: {type(prior).__name__}")
        return best_of(z.float().view(candidates, b, -1), z_t)

"""The KV-cached autoregressive loop of DALL·E's prior: text (+ image prompt) -> image tokens.

One forward pass over the text (and any kept image-prompt tokens) fills the cache; then each
new image token costs one single-position pass whose attention reads the cached keys allowed by
its layer's mask row. Classifier-free guidance runs the conditional and the unconditional
(empty-caption) streams as one batch of ``2B`` and mixes their logits:
``uncond + scale * (cond - uncond)``.
"""

from __future__ import annotations

import dataclasses

import torch

from tessera.models.dalle import DALLE, empty_text
from tessera.sampling.filters import filter_logits, sample


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """temperature / top_k / top_p / threshold: logit filters (:mod:`tessera.sampling.filters`).
    guidance: classifier-free guidance scale; 1 disables it (paper: no guidance).
    use_cache: KV cache (False re-runs the whole prefix per token; for tests/benchmarks)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    threshold: float = 0.0
    guidance: float = 1.0
    use_cache: bool = True

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold}")
        if self.guidance < 0:
            raise ValueError(f"guidance must be >= 0, got {self.guidance}")


@torch.no_grad()
def generate_image_tokens(
    model: DALLE,
    text: torch.Tensor,
    *,
    settings: SamplingConfig | None = None,
    prefix: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample ``(B, grid**2)`` image tokens for text streams ``(B, text_len)``.

    prefix: ``(B, R)`` image tokens to keep (an image prompt's first rows, raster order);
      sampling continues from index ``R``.
    generator: the source of every random draw (one uniform per sampled token and stream).
    """
    s = settings or SamplingConfig()
    cfg = model.config
    b = text.shape[0]
    n = cfg.image_len
    device = text.device
    prefix = prefix if prefix is not None else torch.zeros(b, 0, dtype=torch.long, device=device)
    if prefix.shape[0] != b or prefix.shape[1] > n:
        raise ValueError(f"prefix must be (B={b}, <= {n}) tokens, got {tuple(prefix.shape)}")
    guided = s.guidance != 1.0
    if guided:
        text = torch.cat([text, empty_text(b, cfg, device)], dim=0)
        prefix = torch.cat([prefix, prefix], dim=0)
    tokens = prefix
    r = prefix.shape[1]
    if r == n:
        return tokens[:b]

    was_training = model.training
    model.eval()
    try:
        cache = model.new_cache(text.shape[0]) if s.use_cache else None
        x = model.embed(text, tokens if r else None)
        h = model.hidden(x, cache=cache)[:, -1]  # (B', d): predicts image token r
        out = [tokens]
        for i in range(r, n):
            logits = model.image_logits(h).float()  # (B', V)
            if guided:
                cond, uncond = logits[:b], logits[b:]
                logits = uncond + s.guidance * (cond - uncond)
            logits = filter_logits(
                logits, temperature=s.temperature, k=s.top_k, p=s.top_p, threshold=s.threshold
            )
            nxt = sample(logits, generator)  # (B,)
            if guided:
                nxt = torch.cat([nxt, nxt])
            out.append(nxt[:, None])
            if i == n - 1:
                break
            if cache is not None:
                x = model.embed(None, nxt[:, None], image_start=i)
                h = model.hidden(x, cache=cache, start=cfg.text_len + i)[:, -1]
            else:
                seq = torch.cat(out, dim=1)
                h = model.hidden(model.embed(text, seq))[:, -1]
        return torch.cat(out, dim=1)[:b]
    finally:
        model.train(was_training)

"""Reranking (DALL·E §2.5): score each sample against its prompt and keep the best.

:class:`CLIPScorer` is the reranker every pipeline uses: cosine similarity of image and prompt
embeddings under a CLIP model. :func:`rerank` sorts each prompt's samples best first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from tessera.errors import CheckpointError
from tessera.models.clip import CLIP, check_compatible

# reranker(images (N, 3, H, W) in [0, 1], prompts (N,)) -> scores (N,), higher is better.
Reranker = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


class CLIPScorer:
    """Cosine similarity of images and prompts under a CLIP model; a
    :data:`Reranker` (higher is better).

    Scoring is batched (``batch_size`` images or texts per forward pass); each distinct prompt
    is embedded once however many images it has. Images of another size are resized
    (bicubic, antialiased) to the model's ``image_size``.
    """

    def __init__(self, model: CLIP, tokenizer: Any, *, batch_size: int = 64) -> None:
        check_compatible(model.config, tokenizer)
        self.model, self.tokenizer, self.batch_size = model.eval(), tokenizer, batch_size

    @property
    def device(self) -> torch.device:
        return self.model.logit_scale.device

    @torch.no_grad()
    def embed_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        """(P, embed_dim) normalised text embeddings, float32 on the CPU."""
        out = []
        for s in range(0, len(prompts), self.batch_size):
            enc = self.tokenizer.encode_batch(list(prompts[s : s + self.batch_size]), add_eos=True)
            out.append(self.model.encode_text(enc.ids.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.embed_dim)

    @torch.no_grad()
    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) in [0, 1] -> (N, embed_dim) normalised, float32 on the CPU."""
        s = self.model.config.image_size
        out = []
        for i in range(0, images.shape[0], self.batch_size):
            x = images[i : i + self.batch_size].to(self.device, torch.float32)
            if x.shape[-2:] != (s, s):
                x = F.interpolate(x, size=(s, s), mode="bicubic", antialias=True).clamp(0, 1)
            out.append(self.model.encode_image(x).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.embed_dim)

    def similarity(self, images: torch.Tensor, texts: Sequence[str]) -> torch.Tensor:
        """Cosine similarity of every image with every text: (N, P), in [-1, 1]."""
        return self.embed_images(images) @ self.embed_texts(texts).t()

    def __call__(self, images: torch.Tensor, prompts: Sequence[str]) -> torch.Tensor:
        """Score image ``i`` against ``prompts[i]``: (N,) cosine similarities."""
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        distinct = list(dict.fromkeys(prompts))
        where = {p: i for i, p in enumerate(distinct)}
        text = self.embed_texts(distinct)[[where[p] for p in prompts]]  # (N, D)
        return (self.embed_images(images) * text).sum(-1)


def load_scorer(path: str | Path, *, batch_size: int = 64) -> CLIPScorer:
    """A :class:`CLIPScorer` from a CLIP checkpoint directory saved with its tokenizer."""
    from tessera.checkpoint import load_checkpoint

    ck = load_checkpoint(path, kind="clip")
    if ck.tokenizer is None:
        raise CheckpointError(f"{path} has no tokenizer.json: cannot encode prompts")
    return CLIPScorer(ck.obj, ck.tokenizer, batch_size=batch_size)


def best_first(scores: torch.Tensor, group: int, *, keep: int | None = None) -> list[int]:
    """Indices that sort each consecutive block of ``group`` scores best first (stable), keeping
    the best ``keep`` of each block (default: all). scores: (N,) with N a multiple of group."""
    scores = scores.float().cpu()
    order: list[int] = []
    for start in range(0, scores.shape[0], group):
        block = scores[start : start + group]
        order += (start + torch.argsort(block, descending=True, stable=True))[:keep].tolist()
    return order

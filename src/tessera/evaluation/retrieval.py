"""Retrieval metrics of a similarity matrix (pure functions)."""

from __future__ import annotations

import torch


def recall_at_k(sim: torch.Tensor, k: int = 1) -> tuple[float, float]:
    """(image->text, text->image) recall@k of a square similarity matrix whose diagonal holds
    the matching pairs: ``sim[i, j]`` scores image ``i`` against text ``j``. A query counts as
    found when its match is among its ``k`` highest scores; ties count against it (the match
    must beat every non-match ranked above position ``k``). Values in [0, 1]."""
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"expected a square similarity matrix, got {tuple(sim.shape)}")
    diag = sim.diagonal()
    # rank of the match = how many non-matches score at least as high
    i2t = ((sim >= diag[:, None]).sum(1) - 1) < k
    t2i = ((sim >= diag[None, :]).sum(0) - 1) < k
    return float(i2t.float().mean()), float(t2i.float().mean())

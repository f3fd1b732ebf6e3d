"""Exponential moving average of weights (paper: dVAE 0.999 every update; transformer 0.99
every 25 updates), with a warm-up of the decay. EMA weights are what evaluation, sampling and
release checkpoints use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """Shadow copies of a model's floating-point parameters and buffers, in float32.

    ``update(step)`` folds the live weights in when ``(step + 1) % every == 0``:
    ``ema = d * ema + (1 - d) * live`` with ``d = decay_at(n)`` for the n-th update (0-based).
    With ``warmup`` ``d = min(decay, (1 + n) / (10 + n))`` (the first update keeps 10% of the
    initial weights, after n updates their share is below ``9! n! / (n + 9)!``), so an early
    EMA is usable and a release checkpoint carries no trace of the random initialisation;
    without it ``d = decay`` and a share ``decay**n`` of the initial weights remains. Integer
    buffers are copied as they are. ``updates`` (n) is part of the training checkpoint.
    """

    def __init__(
        self, model: nn.Module, *, decay: float, every: int = 1, warmup: bool = True
    ) -> None:
        if not 0.0 <= decay < 1.0 or every < 1:
            raise ValueError("EMA needs 0 <= decay < 1 and every >= 1")
        self.decay = decay
        self.every = every
        self.warmup = warmup
        self.updates = 0
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> bool:
        """Fold in the live weights after update ``step`` (0-based); returns True if it did."""
        if (step + 1) % self.every:
            return False
        weight = 1.0 - self.decay_at(self.updates)
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach().float(), weight)
            else:
                s.copy_(v)
        self.updates += 1
        return True

    def decay_at(self, n: int) -> float:
        """The decay of the ``n``-th update (0-based)."""
        return min(self.decay, (1 + n) / (10 + n)) if self.warmup else self.decay

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise KeyError(f"EMA state lacks {sorted(missing)[:3]}")
        for k, v in state.items():
            self.shadow[k].copy_(v)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Write the EMA weights into ``model`` (cast to each tensor's dtype)."""
        for k, v in model.state_dict().items():
            v.copy_(self.shadow[k].to(v.dtype))

    @contextlib.contextmanager
    def applied(self, model: nn.Module) -> Iterator[nn.Module]:
        """Temporarily swap the EMA weights into ``model`` (e.g. to sample or evaluate)."""
        backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.copy_to(model)
        try:
            yield model
        finally:
            with torch.no_grad():
                for k, v in model.state_dict().items():
                    v.copy_(backup[k])

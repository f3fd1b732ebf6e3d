"""Exponential moving average of weights (paper: dVAE 0.999 every update; transformer 0.99
every 25 updates). EMA weights are what evaluation, sampling and release checkpoints use."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


class EMA:
    """Shadow copies of a model's floating-point parameters and buffers, in float32.

    ``update(step)`` folds the live weights in when ``(step + 1) % every == 0``:
    ``ema = decay * ema + (1 - decay) * live``. Integer buffers are copied as they are.
    """

    def __init__(self, model: nn.Module, *, decay: float, every: int = 1) -> None:
        if not 0.0 <= decay < 1.0 or every < 1:
            raise ValueError("EMA needs 0 <= decay < 1 and every >= 1")
        self.decay = decay
        self.every = every
        self.shadow: dict[str, torch.Tensor] = {
            k: v.detach().clone().float() if v.is_floating_point() else v.detach().clone()
            for k, v in model.state_dict().items()
        }

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> bool:
        """Fold in the live weights after update ``step`` (0-based); returns True if it did."""
        if (step + 1) % self.every:
            return False
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if s.is_floating_point():
                s.lerp_(v.detach().float(), 1.0 - self.decay)
            else:
                s.copy_(v)
        return True

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

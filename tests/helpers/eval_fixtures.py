"""Shared evaluation fixtures: random FID-Inception weights (no real weights are shipped)."""

from __future__ import annotations

import torch

from tessera.evaluation.inception import FIDInceptionV3


def random_inception_state_dict(seed: int) -> dict[str, torch.Tensor]:
    """Random weights at a scale that keeps activations O(1) through the whole graph."""
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in FIDInceptionV3().state_dict().items()}
    sd = {}
    for k, shape in shapes.items():
        if k.endswith("conv.weight") or k == "fc.weight":
            fan_in = shape[1:].numel()
            sd[k] = torch.randn(shape, generator=g) * (2.0 / fan_in) ** 0.5
        elif k.endswith(("running_var", "bn.weight")):  # positive
            sd[k] = 0.5 + torch.rand(shape, generator=g)
        else:  # bn.bias, running_mean, fc.bias
            sd[k] = 0.1 * torch.randn(shape, generator=g)
    return sd

"""tessera.nn"""

from torch import nn as _nn


def count_parameters(module: _nn.Module) -> int:
    """Number of parameters (works on the meta device: nothing is allocated)."""
    return sum(p.numel() for p in module.parameters())

"""Random generators on the device they draw into (DESIGN: every random draw takes a
generator on the device of the tensor it fills).

A CPU generator cannot fill a CUDA tensor (``torch.rand(..., generator=g, device="cuda")``
raises), so samplers make theirs with :func:`generator_for` on the model's device. On the
CPU, ``generator_for("cpu", seed)`` draws exactly what ``torch.Generator().manual_seed(seed)``
draws, so seeded CPU results are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); CPU for an empty module."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def generator_for(device: torch.device | str, seed: int | None = None) -> torch.Generator:
    """A ``torch.Generator`` on ``device`` (its type: ``cuda:1`` keeps the index), seeded
    with ``seed`` when given (an int in [0, 2**64))."""
    gen = torch.Generator(device=torch.device(device))
    if seed is not None:
        gen.manual_seed(seed)
    return gen

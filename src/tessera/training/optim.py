"""AdamW with the paper's parameter groups: no weight decay on gains, biases, embeddings or
padding tokens (App. B.2)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

_NO_DECAY_MODULES = (
    nn.Embedding,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.RMSNorm,
)


def no_decay_names(model: nn.Module) -> set[str]:
    """Names of parameters exempt from weight decay.

    Exempt: every parameter with fewer than 2 dimensions (biases, gains, scalars), every
    parameter of an embedding or normalisation layer, and whatever the model lists in an
    optional ``no_weight_decay() -> Iterable[str]`` method (e.g. learned padding tokens).
    """
    names: set[str] = set()
    for mod_name, module in model.named_modules():
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if p.ndim < 2 or isinstance(module, _NO_DECAY_MODULES):
                names.add(full)
    extra = getattr(model, "no_weight_decay", None)
    if callable(extra):
        names.update(extra())
    return names


def param_groups(
    model: nn.Module, weight_decay: float, lr_mult: list[tuple[str, float]] | None = None
) -> list[dict]:
    """AdamW groups: decayed weights and exempt parameters (tied weights listed once), split
    further by ``lr_mult`` (name prefix -> step-size factor, first match wins; each group's
    ``lr_mult`` is applied by the trainer on top of the schedule)."""
    exempt = no_decay_names(model)
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():  # named_parameters() skips tied duplicates
        if p.requires_grad:
            bare = name.removeprefix("module.")  # DDP-wrapped
            mult = next((m for pre, m in lr_mult or () if bare.startswith(pre)), 1.0)
            groups.setdefault((name not in exempt, mult), []).append(p)
    order = sorted(groups, key=lambda k: (not k[0], k[1]))
    return [
        {"params": groups[k], "weight_decay": weight_decay if k[0] else 0.0, "lr_mult": k[1]}
        for k in order
    ]


def build_adamw(
    model: nn.Module,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
    lr_mult: list[tuple[str, float]] | None = None,
) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; ``lr`` is overwritten each step by the schedule.

    The fused kernel (one pass over parameter, gradient and both moments) when every parameter
    is a plain floating tensor on CPU or CUDA: measured 11% of a bf16 training step at
    d 512 x 8 layers on 2 CPU cores, where the multi-tensor form makes several passes over
    35M parameters. Sharded (FSDP2 DTensor) parameters keep the multi-tensor form."""
    groups = param_groups(model, weight_decay, lr_mult)
    params = [p for g in groups for p in g["params"]]
    fused = bool(params) and all(
        type(p.data) is torch.Tensor and p.is_floating_point() and p.device.type in ("cpu", "cuda")
        for p in params
    )
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)


def grad_norm(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """Global L2 norm of the gradients of ``params`` (float32 scalar; inf/nan propagate)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(g.float()) for g in grads])
    )

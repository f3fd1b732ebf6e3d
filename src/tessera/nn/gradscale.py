"""Per-resblock gradient scaling: the model-side mechanism (DALL·E, Ramesh et al. 2021, App. D).

In a deep pre-norm transformer trained in 16-bit, activation-gradient norms shrink from the
later resblocks to the earlier ones, so a single loss scale that keeps the late blocks from
overflowing lets the early blocks' gradients underflow float16 (normal range ~6.1e-5 .. 65504,
subnormals down to ~6e-8 with few significant bits). The paper keeps one scale per resblock
and keeps the identity (residual) path's gradient in 32 bits. In the backward pass of
``y = x + f(x)``:

1. the gradient arriving at the branch output (float32, from the identity path) is multiplied
   by the block's scale and only then cast to the branch's compute dtype (float16 under fp16
   autocast), so everything inside the branch, parameter gradients included, is scaled;
2. the gradient leaving the branch input is *filtered* (Inf/NaN -> 0 and the block's
   ``overflow`` flag set), so one block's overflow cannot poison the gradients (and hence the
   scales) of all earlier blocks;
3. it is divided by the scale in float32 and added to the identity path's float32 gradient.

A model opts in by routing each residual branch through a :class:`ResblockGradScale` it owns::

    self.attn_gs = ResblockGradScale(self.attn_norm, self.attn)  # the branch's modules
    ...
    x = self.attn_gs.residual(x, lambda h: self.attn(self.attn_norm(h), mask))

Scaling is off by default (``enabled=False``) and then ``residual`` is exactly ``x + f(x)``.
The trainer-side manager, ``tessera.training.precision.ResblockScaling``, finds every
:class:`ResblockGradScale` in a model, enables it, owns the scale values (its own JSON state,
so the model's ``state_dict``/safetensors export never carries training state), unscales the
parameter gradients per block and raises/lowers each block's scale independently.

Scales are *absolute*: inside block ``i`` the true gradient is multiplied by ``scale``. The
identity path carries the gradient of the scaled loss (``outer_scale`` x the true gradient,
where ``outer_scale`` is the manager's loss scale), so the branch boundary multiplies by
``scale / outer_scale`` on the way in and by its inverse on the way out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ResblockGradScale", "resblock_grad_scales", "set_resblock_scaling"]

# The two float buffers that must stay float32 even when the model is cast with .half():
# a scale of 2**20 is not representable in float16 (max 65504).
_FP32_BUFFERS = ("scale", "outer_scale")


class _ExitBranch(torch.autograd.Function):
    """Branch output boundary: cast up in forward; scale, then cast down, in backward."""

    @staticmethod
    def forward(ctx: Any, y: Tensor, gs: ResblockGradScale, out_dtype: torch.dtype) -> Tensor:
        ctx.gs = gs
        ctx.y_dtype = y.dtype
        # Cast to the dtype the residual add would promote to anyway (float32 for a float16
        # branch on a float32 trunk), so the forward is bit-identical to ``x + f(x)``.
        return y.view_as(y) if y.dtype == out_dtype else y.to(out_dtype)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None]:
        gs: ResblockGradScale = ctx.gs
        # A nonfinite gradient already on the identity path comes from above this block (the
        # loss or the head): record it so the manager does not blame this block for it.
        gs.upstream_nonfinite.logical_or_(~torch.isfinite(g).all())
        ratio = gs.scale / gs.outer_scale  # 0-dim float32 on the block's device
        # Multiply in float32 *before* the cast, so small values are lifted out of the
        # float16 underflow range instead of being flushed by the cast.
        return (g.float() * ratio).to(ctx.y_dtype), None, None


class _EnterBranch(torch.autograd.Function):
    """Branch input boundary: identity in forward; filter and unscale in backward."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, gs: ResblockGradScale) -> Tensor:
        ctx.gs = gs
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> tuple[Tensor, None]:
        gs: ResblockGradScale = ctx.gs
        g32 = g.float()  # no copy when the trunk is already float32
        finite = torch.isfinite(g32)
        gs.overflow.logical_or_(~finite.all())
        ratio = gs.scale / gs.outer_scale
        # The filter: zero Inf/NaN so earlier blocks (and their scales) see clean gradients.
        out = torch.where(finite, g32 / ratio, 0.0)
        return out.to(g.dtype), None


class ResblockGradScale(nn.Module):
    """One resblock's gradient scale, non-finite flag and branch boundary functions.

    Args:
        *branch: the modules whose parameters live inside this residual branch (e.g. the
            pre-norm and the attention). The trainer divides exactly these parameters'
            gradients by this block's scale, so every parameter used inside the branch must be
            listed here (and belong to one block only). Held by reference, not registered as
            children, so parameter names in the model's ``state_dict`` are unchanged.
        init_scale: initial scale, > 0 (default 2**13; the manager may override it).
        enabled: start with scaling on. Off (the default) for fp32/bf16; the trainer's
            ``ResblockScaling`` turns it on for fp16.

    Buffers (all non-persistent: the trainer's manager checkpoints the scales itself):
        ``scale`` (float32, 0-dim): this block's absolute gradient scale.
        ``outer_scale`` (float32, 0-dim): the scale of the gradient arriving on the identity
            path (the manager's loss scale); 1.0 if no loss scaling.
        ``overflow`` (bool, 0-dim): set in backward when the filter zeroed Inf/NaN in the
            gradient leaving this branch; cleared by the manager after each update.
        ``upstream_nonfinite`` (bool, 0-dim): set when the gradient arriving from above was
            already nonfinite (not this block's fault).
    """

    scale: Tensor
    outer_scale: Tensor
    overflow: Tensor
    upstream_nonfinite: Tensor

    def __init__(self, *branch: nn.Module, init_scale: float = 2.0**13, enabled: bool = False):
        super().__init__()
        if not init_scale > 0:
            raise ValueError(f"init_scale must be > 0, got {init_scale}")
        for m in branch:
            if not isinstance(m, nn.Module):
                raise TypeError(f"branch members must be nn.Module, got {type(m).__name__}")
        # A tuple is not registered by nn.Module.__setattr__: no duplicate parameter names.
        self.branch_modules: tuple[nn.Module, ...] = tuple(branch)
        self.enabled = enabled
        f32 = torch.float32
        self.register_buffer("scale", torch.tensor(float(init_scale), dtype=f32), False)
        self.register_buffer("outer_scale", torch.tensor(1.0, dtype=f32), False)
        self.register_buffer("overflow", torch.tensor(False), False)
        self.register_buffer("upstream_nonfinite", torch.tensor(False), False)

    def branch_parameters(self) -> Iterable[nn.Parameter]:
        """Parameters of the declared branch modules (duplicates removed), in module order."""
        seen: set[int] = set()
        for m in self.branch_modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p

    def residual(
        self, x: Tensor, branch: Callable[..., Tensor], *args: Any, **kwargs: Any
    ) -> Tensor:
        """Return ``x + branch(x, *args, **kwargs)`` with this block's gradient scaling.

        Disabled: literally that expression. Enabled: ``x`` and every floating tensor in
        ``args``/``kwargs`` that requires grad enter the branch through the filter/unscale
        boundary (so e.g. a text context gets true-scale gradients back), and the branch output
        leaves through the scale boundary. ``branch`` may wrap its body in
        ``torch.utils.checkpoint.checkpoint(..., use_reentrant=False)``, and the whole
        ``residual`` call may be checkpointed too.
        """
        if not self.enabled:
            return x + branch(x, *args, **kwargs)
        h = self.enter(x)
        args = tuple(self._maybe_enter(a) for a in args)
        kwargs = {k: self._maybe_enter(v) for k, v in kwargs.items()}
        y = branch(h, *args, **kwargs)
        out_dtype = torch.promote_types(x.dtype, y.dtype)
        return x + self.exit(y, out_dtype)

    def enter(self, x: Tensor) -> Tensor:
        """Mark ``x`` as an input of the branch (identity forward; filter + unscale backward).

        For hand-wired blocks; :meth:`residual` calls it for you. No-op when disabled.
        """
        if not self.enabled:
            return x
        return _EnterBranch.apply(x, self)

    def exit(self, y: Tensor, out_dtype: torch.dtype | None = None) -> Tensor:
        """Mark ``y`` as the branch output; cast it to ``out_dtype`` (default: ``y.dtype``).

        Backward multiplies the incoming gradient by ``scale / outer_scale`` in float32 and
        then casts it to ``y.dtype``. No-op when disabled.
        """
        if not self.enabled:
            return y
        return _ExitBranch.apply(y, self, y.dtype if out_dtype is None else out_dtype)

    def _maybe_enter(self, v: Any) -> Any:
        if isinstance(v, Tensor) and v.requires_grad and v.is_floating_point():
            return _EnterBranch.apply(v, self)
        return v

    @torch.no_grad()
    def set_scales(self, scale: float, outer_scale: float = 1.0) -> None:
        """Write this block's absolute ``scale`` and the identity-path ``outer_scale`` (> 0)."""
        self.scale.fill_(scale)
        self.outer_scale.fill_(outer_scale)

    @torch.no_grad()
    def reset_flags(self) -> None:
        """Clear ``overflow`` and ``upstream_nonfinite`` (the manager does this each step)."""
        self.overflow.fill_(False)
        self.upstream_nonfinite.fill_(False)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> ResblockGradScale:
        # Follow device moves, but never let .half()/.to(dtype) cast the scales: 2**16 and
        # above would become inf in float16.
        keep = {n: self._buffers[n] for n in _FP32_BUFFERS}
        super()._apply(fn, recurse)
        for n, old in keep.items():
            new = self._buffers[n]
            if new is not None and old is not None and new.dtype != torch.float32:
                self._buffers[n] = old.to(device=new.device)
        return self

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}, branch_modules={len(self.branch_modules)}"


def resblock_grad_scales(model: nn.Module) -> list[tuple[str, ResblockGradScale]]:
    """Every :class:`ResblockGradScale` in ``model`` with its qualified name, in module order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ResblockGradScale)]


def set_resblock_scaling(model: nn.Module, enabled: bool) -> int:
    """Turn every :class:`ResblockGradScale` in ``model`` on or off; return how many."""
    blocks = resblock_grad_scales(model)
    for _, m in blocks:
        m.enabled = enabled
    return len(blocks)

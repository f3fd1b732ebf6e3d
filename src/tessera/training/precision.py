"""Mixed precision for the trainer: autocast and gradient scaling, model-agnostic.

One interface, :class:`GradScaling`, three implementations:

* :class:`NoScaling` for fp32 and bf16 (bf16 has float32's exponent range: nothing underflows
  that would not underflow in fp32), still reporting non-finite gradients;
* :class:`GlobalScaling` for fp16 with one loss scale (wraps ``torch.amp.GradScaler``);
* :class:`ResblockScaling` for fp16 with the DALL·E paper's per-resblock scales (App. D): it
  finds every :class:`tessera.nn.gradscale.ResblockGradScale` in the model, enables it, and
  keeps one scale per block plus a GradScaler-like loss scale for the parameters outside any
  block (embeddings, final norm, head).

The trainer's step, for every implementation::

    scaling = make_grad_scaling(model, precision, device.type, per_resblock=True)
    for micro_batch in step_batches:                      # gradient accumulation
        with autocast(device.type, precision):
            loss = objective(model, micro_batch) / len(step_batches)
        scaling.scale_loss(loss).backward()
    finite = scaling.unscale_(optimizer)   # once per step: grads now at true scale (fp32)
    if finite:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)   # on true gradients
        optimizer.step(); scheduler.step(); ema.update(model)
    else:
        skipped_steps += 1                 # optimizer, scheduler and EMA untouched (T20)
    scaling.update(finite)                 # always, skipped or not: adjusts the scales
    optimizer.zero_grad(set_to_none=True)

``unscale_`` all-reduces its non-finite flags (MAX) over the default process group when
``torch.distributed`` is initialized with more than one rank, so every rank takes the same
skip decision and keeps identical scales; pass ``reduce=`` to use another group.

``state_dict()`` returns plain Python numbers, strings and lists, so the trainer can write it as
JSON next to the checkpoint (no pickle); ``load_state_dict`` restores it exactly.

fp16 autocast on CPU: torch 2.13's CPU autocast accepts ``dtype=torch.float16`` (checked:
``nn.Linear`` under ``torch.autocast("cpu", dtype=torch.float16)`` returns float16 outputs and
its backward runs, with real IEEE half rounding and subnormals), so the fp16 path, scalers
included, runs and is tested on CPU. The CPU cast policy is not CUDA's (e.g. CPU autocast
leaves ``layer_norm`` in the input dtype), so CPU fp16 is for tests, not for speed.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from tessera.errors import CheckpointError, ConfigError
from tessera.nn.gradscale import ResblockGradScale, resblock_grad_scales, set_resblock_scaling

__all__ = [
    "GlobalScaling",
    "GradScaling",
    "NoScaling",
    "Precision",
    "ResblockScaling",
    "autocast",
    "dalle_paper_settings",
    "make_grad_scaling",
]

Precision = Literal["fp32", "bf16", "fp16"]
_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}

# All-reduce (MAX) of a small float32 flag tensor, in place, across data-parallel ranks.
Reduce = Callable[[Tensor], None]
ParamsOrOptimizer = torch.optim.Optimizer | Iterable[Tensor]


def _check_precision(precision: str) -> None:
    if precision not in get_args(Precision):
        raise ConfigError(f"precision must be one of {get_args(Precision)}, got {precision!r}")


def autocast(device_type: str, precision: Precision) -> AbstractContextManager[Any]:
    """Context manager running the forward pass at ``precision`` on ``device_type``.

    ``"fp32"`` is a ``nullcontext`` (no autocast at all); ``"bf16"``/``"fp16"`` are
    ``torch.autocast(device_type, dtype=torch.bfloat16 / torch.float16)``. Wrap the forward
    and the loss only; run ``backward()`` outside it.
    """
    _check_precision(precision)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=_DTYPES[precision])


def _default_reduce(flags: Tensor) -> None:
    """MAX-all-reduce ``flags`` over the default group when running with > 1 rank."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)


def _params(params: ParamsOrOptimizer) -> list[Tensor]:
    """The parameters of an optimizer (all param groups) or of an iterable, that have a grad."""
    if isinstance(params, torch.optim.Optimizer):
        ps = [p for group in params.param_groups for p in group["params"]]
    else:
        ps = list(params)
    out = [p for p in ps if p.grad is not None]
    if not out:
        raise ValueError("unscale_: no parameter has a gradient; call backward() first")
    return out


def _grad_values(p: Tensor) -> Tensor:
    """The dense tensor holding ``p.grad``'s values (coalesced values for a sparse grad)."""
    g = p.grad
    assert g is not None
    if g.is_sparse:
        # Duplicate indices would be summed later; check (and unscale) the summed values.
        p.grad = g = g.coalesce()
        return g._values()
    return g


def _next_scale(
    scale: float,
    tracker: int,
    overflow: bool,
    *,
    growth_factor: float,
    backoff_factor: float,
    growth_interval: int,
) -> tuple[float, int]:
    """GradScaler's rule (``torch._amp_update_scale_``): back off on overflow, else count
    clean steps and grow after ``growth_interval`` of them. Returns (scale, tracker)."""
    if overflow:
        return scale * backoff_factor, 0
    tracker += 1
    if tracker == growth_interval:
        grown = scale * growth_factor
        return (grown if math.isfinite(grown) else scale), 0
    return scale, tracker


class GradScaling(ABC):
    """What the trainer calls each step; see the module docstring for the exact order."""

    kind: str

    @abstractmethod
    def scale_loss(self, loss: Tensor) -> Tensor:
        """The loss to call ``backward()`` on (``loss`` times the loss scale)."""

    @abstractmethod
    def unscale_(self, params: ParamsOrOptimizer, *, reduce: Reduce | None = None) -> bool:
        """Bring all gradients to true scale in place; True iff every gradient is finite.

        Call once per optimizer step, after the last ``backward()`` of the step. ``params``
        is the optimizer (all its param groups) or an iterable of parameters.
        """

    @abstractmethod
    def update(self, finite: bool) -> None:
        """Adjust the scale(s) after the step. ``finite`` is the trainer's final decision (the
        value ``unscale_`` returned, possibly and-ed with its own checks); False can only add
        to what ``unscale_`` saw, never hide it."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state (plain numbers, strings, lists) to checkpoint."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output exactly; ``CheckpointError`` if it does not fit."""

    def scales(self) -> list[float]:
        """Per-resblock scales for logging, in model order (empty unless per-resblock)."""
        return []

    @property
    def loss_scale(self) -> float:
        """The scale the loss is multiplied by (1.0 when not scaling)."""
        return 1.0

    def _check_kind(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind:
            raise CheckpointError(
                f"gradient-scaling state is for {state.get('kind')!r}, this run uses "
                f"{self.kind!r} (precision or per_resblock changed since the checkpoint)"
            )


class NoScaling(GradScaling):
    """fp32 / bf16: no scaling; ``unscale_`` only checks that every gradient is finite."""

    kind = "none"

    def scale_loss(self, loss: Tensor) -> Tensor:
        return loss

    def unscale_(self, params: ParamsOrOptimizer, *, reduce: Reduce | None = None) -> bool:
        grads = [_grad_values(p) for p in _params(params)]
        # Max-abs norm (read-only): inf if any grad is +-inf, NaN if any is NaN.
        top = torch.nn.utils.get_total_norm(grads, norm_type=math.inf)
        flag = (~torch.isfinite(top)).float().reshape(1)
        (reduce or _default_reduce)(flag)
        return not bool(flag.item())

    def update(self, finite: bool) -> None:
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_kind(state)


class _ParamGroups:
    """Minimal optimizer stand-in so GradScaler.unscale_ accepts a plain parameter list."""

    def __init__(self, params: list[Tensor]):
        self.param_groups = [{"params": params}]


class GlobalScaling(GradScaling):
    """fp16 with one dynamic loss scale: ``torch.amp.GradScaler(device_type)``.

    On a non-finite gradient the step must be skipped and ``update`` halves the scale
    (65536 -> 32768 with the defaults); after ``growth_interval`` clean steps it doubles.

    Args:
        device_type: "cuda", "cpu", ... (GradScaler("cpu") exists and works).
        init_scale: initial loss scale (default 2**16).
        growth_factor, backoff_factor, growth_interval: GradScaler's (2.0, 0.5, 2000).
    """

    kind = "global"

    def __init__(
        self,
        device_type: str,
        *,
        init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
    ):
        self.scaler = torch.amp.GradScaler(
            device_type,
            init_scale=init_scale,
            growth_factor=growth_factor,
            backoff_factor=backoff_factor,
            growth_interval=growth_interval,
        )
        # GradScaler's per-device found-inf tensors of this step (the same objects its
        # update() reads); None until unscale_ has run in this step.
        self._found: dict[Any, Tensor] | None = None
        self._opt: Any = None

    def scale_loss(self, loss: Tensor) -> Tensor:
        return self.scaler.scale(loss)

    def unscale_(self, params: ParamsOrOptimizer, *, reduce: Reduce | None = None) -> bool:
        if self._found is not None:
            raise RuntimeError("unscale_() was already called in this step; call update() first")
        if isinstance(params, torch.optim.Optimizer):
            _params(params)  # same "no gradient" error as the other implementations
            opt: Any = params
        else:
            opt = _ParamGroups(_params(params))
        self.scaler.unscale_(opt)  # type: ignore[arg-type]
        found = self.scaler._found_inf_per_device(opt)  # type: ignore[arg-type]
        first = next(iter(found.values()))
        total = torch.stack([f.to(first.device) for f in found.values()]).amax().reshape(1)
        (reduce or _default_reduce)(total)
        for f in found.values():  # every rank's GradScaler.update() sees the agreed flag
            f.copy_(total[0].to(f.device))
        self._found, self._opt = found, opt
        return not bool(total.item())

    def update(self, finite: bool) -> None:
        if self._found is None:
            raise RuntimeError("update() needs unscale_() earlier in the same step")
        if not finite:
            for f in self._found.values():
                f.fill_(1.0)
        self.scaler.update()
        self._found = self._opt = None

    def state_dict(self) -> dict[str, Any]:
        # GradScaler's own dict: scale (float), growth_factor, backoff_factor (float),
        # growth_interval and _growth_tracker (int).
        return {"kind": self.kind, "grad_scaler": dict(self.scaler.state_dict())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_kind(state)
        try:
            self.scaler.load_state_dict(dict(state["grad_scaler"]))
        except (KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"bad GradScaler state: {e}") from e

    @property
    def loss_scale(self) -> float:
        return self.scaler.get_scale()


def _strip_wrappers(name: str) -> str:
    """Module name without leading DDP ``module.`` / torch.compile ``_orig_mod.`` prefixes."""
    parts = name.split(".")
    while parts and parts[0] in ("module", "_orig_mod"):
        parts = parts[1:]
    return ".".join(parts)


def dalle_paper_settings(world_size: int = 1) -> dict[str, Any]:
    """:class:`ResblockScaling` keyword arguments for the DALL·E paper's schedule (App. D.1).

    Every scale starts at ``M * 2**13`` (``M`` = data-parallel replicas), is multiplied by
    ``2**(1/1000)`` after every update whose block gradients are finite, is divided by
    ``sqrt(2)`` on a non-finite one, at most once per 125 updates, and is clamped to
    ``[M * 2**7, M * 2**24]``. The paper folds ``M`` into the scales because it divides the
    loss by the global batch size; with fp32 master gradients averaged by DDP, ``M = 1`` is
    the equivalent here. Non-power-of-two scales make unscaling round (<= 1 ulp).
    """
    m = float(world_size)
    return {
        "init_scale": m * 2.0**13,
        "growth_factor": 2.0 ** (1 / 1000),
        "growth_interval": 1,
        "backoff_factor": 2.0**-0.5,
        "backoff_window": 125,
        "min_scale": m * 2.0**7,
        "max_scale": m * 2.0**24,
    }


class ResblockScaling(GradScaling):
    """fp16 with one gradient scale per resblock (DALL·E App. D) plus a loss scale.

    Scales are absolute: block ``i``'s parameters receive ``scale_i`` x their true gradient;
    parameters outside every block receive ``loss_scale`` x theirs. ``unscale_`` divides each
    group by its own scale. A block *overflows* in a step when its parameter gradients or the
    gradient leaving its branch (the filter flag) were non-finite while the gradient reaching
    it from above was finite; a non-finite gradient from above (NaN loss, head overflow) is
    charged to the loss scale instead, so the blocks' scales are not all dropped for it.

    ``update``: per block, on overflow multiply its scale by ``backoff_factor`` (unless it was
    already backed off within the last ``backoff_window`` updates) and restart its count;
    after ``growth_interval`` consecutive clean updates multiply it by ``growth_factor``.
    Block scales are clamped to [``min_scale``, ``max_scale``]. The loss scale follows
    GradScaler's rule exactly (no window, no clamps). Any overflow skips the whole step.

    Args:
        model: the model (or its DDP/compiled wrapper); build the manager after moving the
            model to its device, since parameters are matched by identity.
        init_scale: initial scale for every block (None: each block's own ``scale`` buffer,
            i.e. its ``init_scale`` argument, default 2**13 as in the paper).
        loss_init_scale: initial loss scale (default 2**16, GradScaler's).
        growth_factor, backoff_factor, growth_interval: as GradScaler (2.0, 0.5, 2000).
        backoff_window: minimum number of updates between two backoffs of the same block
            scale (0: none; the paper used 125).
        min_scale, max_scale: clamps for block scales (default 2**7 and 2**24, the paper's).

    See :func:`dalle_paper_settings` for the paper's exact schedule.
    """

    kind = "resblock"

    def __init__(
        self,
        model: nn.Module,
        *,
        init_scale: float | None = None,
        loss_init_scale: float = 2.0**16,
        growth_factor: float = 2.0,
        backoff_factor: float = 0.5,
        growth_interval: int = 2000,
        backoff_window: int = 0,
        min_scale: float = 2.0**7,
        max_scale: float = 2.0**24,
    ):
        if not (growth_factor > 1.0 and 0.0 < backoff_factor < 1.0 and growth_interval >= 1):
            raise ConfigError(
                "need growth_factor > 1, 0 < backoff_factor < 1, growth_interval >= 1"
            )
        if not 0.0 < min_scale <= max_scale or backoff_window < 0 or not loss_init_scale > 0:
            raise ConfigError(
                "need 0 < min_scale <= max_scale, backoff_window >= 0, loss_init_scale > 0; got "
                f"{min_scale}, {max_scale}, {backoff_window}, {loss_init_scale}"
            )
        found = resblock_grad_scales(model)
        self.names = [_strip_wrappers(n) for n, _ in found]
        self.blocks: list[ResblockGradScale] = [m for _, m in found]
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.backoff_window = int(backoff_window)
        self.min_scale, self.max_scale = float(min_scale), float(max_scale)

        # Parameter -> group: block index, or len(blocks) for "outside every block".
        self._group: dict[int, int] = {}
        for i, (name, m) in enumerate(zip(self.names, self.blocks)):
            if not m.branch_modules:
                raise ConfigError(f"ResblockGradScale {name!r} declares no branch modules")
            for p in m.branch_parameters():
                if id(p) in self._group:
                    other = self.names[self._group[id(p)]]
                    raise ConfigError(
                        f"a parameter is in the branches of both {other!r} and {name!r}"
                    )
                self._group[id(p)] = i

        n = len(self.blocks)
        self._scales = [
            self._clamp(init_scale if init_scale is not None else float(m.scale))
            for m in self.blocks
        ]
        self._trackers = [0] * n  # consecutive clean updates, per block
        self._since_backoff = [self.backoff_window] * n  # updates since its last backoff
        self._loss_scale = float(loss_init_scale)
        self._loss_tracker = 0
        # (per-block overflow, loss-scale overflow) seen by unscale_ in this step.
        self._observed: tuple[list[bool], bool] | None = None
        self._written: list[tuple[float, float] | None] = [None] * n
        set_resblock_scaling(model, True)
        for m in self.blocks:
            m.reset_flags()
        self._write_buffers()

    def _clamp(self, s: float) -> float:
        return min(max(s, self.min_scale), self.max_scale)

    def _write_buffers(self) -> None:
        # One tiny fill per changed block (no host-device sync); the backward pass reads them.
        for i, m in enumerate(self.blocks):
            want = (self._scales[i], self._loss_scale)
            if self._written[i] != want:
                m.set_scales(*want)
                self._written[i] = want

    def scale_loss(self, loss: Tensor) -> Tensor:
        self._write_buffers()
        return loss * self._loss_scale

    def unscale_(self, params: ParamsOrOptimizer, *, reduce: Reduce | None = None) -> bool:
        if self._observed is not None:
            raise RuntimeError("unscale_() was already called in this step; call update() first")
        ps = _params(params)
        n = len(self.blocks)
        dev = ps[0].grad.device  # type: ignore[union-attr]
        # found[i] = 1.0 if group i (blocks 0..n-1, then the outside group) saw inf/NaN.
        found = torch.zeros(n + 1, dtype=torch.float32, device=dev)
        buckets: dict[tuple[int, torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
        with torch.no_grad():
            for p in ps:
                g = _grad_values(p)
                buckets[(self._group.get(id(p), n), g.device, g.dtype)].append(g)
            per_dev_found: dict[tuple[int, torch.device], Tensor] = {}
            for (gi, d, _), grads in buckets.items():
                scale = self._scales[gi] if gi < n else self._loss_scale
                f = per_dev_found.get((gi, d))
                if f is None:
                    f = per_dev_found[(gi, d)] = torch.zeros((), dtype=torch.float32, device=d)
                # Reciprocal in float64 like GradScaler; exact for power-of-two scales.
                inv = torch.full((), 1.0 / scale, dtype=torch.float32, device=d)
                torch._amp_foreach_non_finite_check_and_unscale_(grads, f, inv)
            for (gi, _), f in per_dev_found.items():
                found[gi] = torch.maximum(found[gi], f.to(dev))
            if n:
                over = torch.stack([m.overflow.to(dev) for m in self.blocks])
                upstream = torch.stack([m.upstream_nonfinite.to(dev) for m in self.blocks])
                blame = ((found[:n] > 0) | over) & ~upstream
                found[n] = torch.maximum(found[n], upstream.any().float())
                found[:n] = blame.float()
        (reduce or _default_reduce)(found)
        flags = [v > 0 for v in found.tolist()]  # the step's one host-device sync
        self._observed = (flags[:n], flags[n])
        return not any(flags)

    def update(self, finite: bool) -> None:
        if self._observed is None:
            raise RuntimeError("update() needs unscale_() earlier in the same step")
        block_over, loss_over = self._observed
        if not finite and not any(block_over):
            loss_over = True  # an overflow the blocks did not see: charge the loss scale
        rule = {
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
        }
        for i, over in enumerate(block_over):
            self._since_backoff[i] += 1
            if over and self._since_backoff[i] <= self.backoff_window:
                self._trackers[i] = 0  # skipped step, but no second backoff inside the window
                continue
            s, self._trackers[i] = _next_scale(self._scales[i], self._trackers[i], over, **rule)
            self._scales[i] = self._clamp(s)
            if over:
                self._since_backoff[i] = 0
        self._loss_scale, self._loss_tracker = _next_scale(
            self._loss_scale, self._loss_tracker, loss_over, **rule
        )
        for m in self.blocks:
            m.reset_flags()
        self._observed = None
        self._write_buffers()

    def scales(self) -> list[float]:
        return list(self._scales)

    @property
    def loss_scale(self) -> float:
        return self._loss_scale

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "loss_scale": self._loss_scale,
            "loss_growth_tracker": self._loss_tracker,
            "growth_factor": self.growth_factor,
            "backoff_factor": self.backoff_factor,
            "growth_interval": self.growth_interval,
            "backoff_window": self.backoff_window,
            "min_scale": self.min_scale,
            "max_scale": self.max_scale,
            "blocks": list(self.names),
            "scales": list(self._scales),
            "growth_trackers": list(self._trackers),
            "updates_since_backoff": list(self._since_backoff),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self._check_kind(state)
        try:
            names = [str(n) for n in state["blocks"]]
            scales = [float(s) for s in state["scales"]]
            trackers = [int(t) for t in state["growth_trackers"]]
            since = [int(t) for t in state["updates_since_backoff"]]
            loss_scale = float(state["loss_scale"])
            loss_tracker = int(state["loss_growth_tracker"])
            hyper = (
                float(state["growth_factor"]),
                float(state["backoff_factor"]),
                int(state["growth_interval"]),
                int(state["backoff_window"]),
                float(state["min_scale"]),
                float(state["max_scale"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"bad per-resblock scaling state: {e!r}") from e
        if names != self.names:
            raise CheckpointError(
                f"per-resblock scaling state has {len(names)} blocks, the model has "
                f"{len(self.names)} (or their names differ): not the same architecture"
            )
        if not len(scales) == len(trackers) == len(since) == len(names):
            raise CheckpointError("per-resblock scaling state: per-block list lengths differ")
        if not all(s > 0 and math.isfinite(s) for s in [*scales, loss_scale]):
            raise CheckpointError("per-resblock scaling state: scales must be finite and > 0")
        self._scales, self._trackers, self._since_backoff = scales, trackers, since
        self._loss_scale, self._loss_tracker = loss_scale, loss_tracker
        (
            self.growth_factor,
            self.backoff_factor,
            self.growth_interval,
            self.backoff_window,
            self.min_scale,
            self.max_scale,
        ) = hyper
        self._write_buffers()


def make_grad_scaling(
    model: nn.Module,
    precision: Precision,
    device_type: str,
    *,
    per_resblock: bool,
    **kw: Any,
) -> GradScaling:
    """The gradient-scaling manager for a run.

    * fp32 / bf16 -> :class:`NoScaling` (``per_resblock`` is ignored: bf16 shares float32's
      exponent range, so there is nothing to rescue);
    * fp16, ``per_resblock=False`` -> :class:`GlobalScaling` (``kw``: GradScaler's knobs);
    * fp16, ``per_resblock=True`` -> :class:`ResblockScaling` (``kw``: its knobs). A model
      with no ``ResblockGradScale`` (e.g. the dVAE) then has only the loss scale, which
      behaves like GradScaler.

    Except for ResblockScaling, every ``ResblockGradScale`` in ``model`` is disabled, so a
    block left enabled cannot scale gradients that nobody unscales.
    """
    _check_precision(precision)
    if precision != "fp16" or not per_resblock:
        set_resblock_scaling(model, False)
    if precision != "fp16":
        if kw:
            raise ConfigError(f"{precision} uses no gradient scaling; unexpected {sorted(kw)}")
        return NoScaling()
    if per_resblock:
        return ResblockScaling(model, **kw)
    return GlobalScaling(device_type, **kw)

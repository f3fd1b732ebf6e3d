"""The model-side per-resblock gradient scaling mechanism (tessera.nn.gradscale).

Exact checks: with power-of-two scales, scaling is exact in float32, so "scaled then
unscaled" must equal "never scaled" bit for bit (torch.equal), not just approximately.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tessera.nn.gradscale import ResblockGradScale, resblock_grad_scales, set_resblock_scaling
from tessera.training.precision import ResblockScaling

D = 8


class Branch(nn.Module):
    """A pre-norm MLP branch; ``poison`` injects +inf into its internal gradient."""

    def __init__(self, d: int = D):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.poison = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        a = torch.tanh(self.fc1(self.norm(h)))  # (B, 2d)
        if self.poison and a.requires_grad:
            # Overflow inside this branch's backward: one element of dL/da becomes +inf.
            a.register_hook(lambda g: g.index_fill(-1, torch.tensor([0]), math.inf))
        return self.fc2(a)


class Block(nn.Module):
    def __init__(self, d: int = D, ckpt: str = "none"):
        super().__init__()
        self.branch = Branch(d)
        self.gs = ResblockGradScale(self.branch)
        self.ckpt = ckpt  # "none" | "branch" | "residual"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ckpt == "branch":
            return self.gs.residual(x, lambda h: checkpoint(self.branch, h, use_reentrant=False))
        if self.ckpt == "residual":
            return checkpoint(self.gs.residual, x, self.branch, use_reentrant=False)
        return self.gs.residual(x, self.branch)


class Stack(nn.Module):
    def __init__(self, n: int = 3, d: int = D, ckpt: str = "none"):
        super().__init__()
        self.inp = nn.Linear(d, d)
        self.blocks = nn.ModuleList(Block(d, ckpt) for _ in range(n))
        self.head = nn.Linear(d, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).float()  # the identity path stays float32 under autocast
        for b in self.blocks:
            h = b(h)
        return self.head(h).float().square().mean()


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _set(model: nn.Module, enabled: bool, scale: float = 1.0, outer: float = 1.0) -> None:
    set_resblock_scaling(model, enabled)
    for _, gs in resblock_grad_scales(model):
        gs.set_scales(scale, outer)
        gs.reset_flags()


def test_disabled_is_bit_identical_to_plain_residual():
    torch.manual_seed(0)
    branch = Branch()
    gs = ResblockGradScale(branch)  # disabled by default
    x = torch.randn(4, D, requires_grad=True)

    out = gs.residual(x, branch)
    out.square().sum().backward()
    got = (out.detach(), x.grad.clone(), [p.grad.clone() for p in branch.parameters()])

    x.grad = None
    branch.zero_grad(set_to_none=True)
    ref = x + branch(x)
    ref.square().sum().backward()
    assert torch.equal(got[0], ref.detach())
    assert torch.equal(got[1], x.grad)
    assert all(torch.equal(a, p.grad) for a, p in zip(got[2], branch.parameters()))
    assert gs.enter(x) is x and gs.exit(ref) is ref  # disabled boundaries are no-ops


@pytest.mark.parametrize("scale", [1.0, 2.0**10])
def test_enabled_fp32_scales_branch_grads_exactly_and_returns_true_input_grad(scale):
    torch.manual_seed(0)
    model = Stack()
    x = torch.randn(5, D)
    model(x).backward()
    ref = _grads(model)

    model.zero_grad(set_to_none=True)
    _set(model, True, scale=scale, outer=1.0)
    model(x).backward()
    got = _grads(model)
    for name, g in got.items():
        # Branch parameters carry the block's scale; everything else (inp, head) the true one.
        factor = scale if ".branch." in name else 1.0
        assert torch.equal(g, ref[name] * factor), name
    assert not any(bool(gs.overflow) for _, gs in resblock_grad_scales(model))


def test_ratio_to_outer_scale_makes_block_scale_absolute():
    # The identity path carries outer x true gradient; inside the block it becomes scale x true.
    torch.manual_seed(0)
    model = Stack()
    x = torch.randn(5, D)
    model(x).backward()
    ref = _grads(model)
    model.zero_grad(set_to_none=True)
    _set(model, True, scale=2.0**12, outer=2.0**5)
    (model(x) * 2.0**5).backward()
    for name, g in _grads(model).items():
        factor = 2.0**12 if ".branch." in name else 2.0**5
        assert torch.equal(g, ref[name] * factor), name


def test_fp16_autocast_boundary_dtypes():
    torch.manual_seed(0)
    branch = Branch()
    gs = ResblockGradScale(branch, init_scale=2.0**8, enabled=True)
    seen = {}
    x = torch.randn(4, D, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):

        def body(h):
            y = branch(h)
            y.register_hook(lambda g: seen.__setitem__("branch_out_grad", g.dtype))
            return y

        out = gs.residual(x, body)
    assert out.dtype == torch.float32  # fp32 identity path
    out.sum().backward()
    assert seen["branch_out_grad"] == torch.float16  # scaled, then cast to the branch dtype
    assert x.grad.dtype == torch.float32


def test_filter_zeroes_inf_flags_only_that_block_and_spares_earlier_blocks():
    torch.manual_seed(0)
    model = Stack(n=3)
    x = torch.randn(6, D)
    mgr = ResblockScaling(model, init_scale=2.0**10, loss_init_scale=2.0**4, growth_interval=5)
    before = mgr.scales()

    model.blocks[1].branch.poison = True
    mgr.scale_loss(model(x)).backward()
    flags = [bool(b.gs.overflow) for b in model.blocks]
    assert flags == [False, True, False]
    assert not any(bool(b.gs.upstream_nonfinite) for b in model.blocks)
    # Nothing nonfinite leaked below block 1: block 0 and the input layer are clean.
    for p in [*model.blocks[0].parameters(), *model.inp.parameters()]:
        assert torch.isfinite(p.grad).all()
    assert not torch.isfinite(model.blocks[1].branch.fc1.weight.grad).all()

    finite = mgr.unscale_(model.parameters())
    assert finite is False
    mgr.update(finite)
    after = mgr.scales()
    assert after[1] == before[1] * 0.5  # only the overflowing block backs off
    assert after[0] == before[0] and after[2] == before[2]
    assert mgr.loss_scale == 2.0**4
    assert not any(bool(b.gs.overflow) for b in model.blocks)  # flags cleared for next step


def test_nonfinite_from_above_is_charged_to_the_loss_scale_not_the_blocks():
    torch.manual_seed(0)
    model = Stack(n=3)
    mgr = ResblockScaling(model, init_scale=2.0**10, loss_init_scale=2.0**4)
    loss = model(torch.randn(6, D)) * float("nan")  # e.g. a NaN loss
    mgr.scale_loss(loss).backward()
    assert all(bool(b.gs.upstream_nonfinite) for b in model.blocks)
    assert mgr.unscale_(model.parameters()) is False
    mgr.update(False)
    assert mgr.scales() == [2.0**10] * 3
    assert mgr.loss_scale == 2.0**3


@pytest.mark.parametrize("ckpt", ["branch", "residual"])
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_activation_checkpointing_gives_identical_grads_and_flags(ckpt, precision):
    torch.manual_seed(0)
    plain = Stack(n=3)
    ck = copy.deepcopy(plain)
    for b in ck.blocks:
        b.ckpt = ckpt
    x = torch.randn(6, D)
    results = []
    for model in (plain, ck):
        _set(model, True, scale=2.0**9, outer=2.0**2)
        with torch.autocast("cpu", dtype=torch.float16, enabled=precision == "fp16"):
            loss = model(x)
        (loss * 2.0**2).backward()
        results.append(_grads(model))
    assert results[0].keys() == results[1].keys()
    for name in results[0]:
        assert torch.equal(results[0][name], results[1][name]), name

    # The filter also fires under checkpointing (the backward recomputes the branch).
    ck.zero_grad(set_to_none=True)
    _set(ck, True, scale=2.0**9, outer=1.0)
    ck.blocks[2].branch.poison = True
    ck(x).backward()
    assert [bool(b.gs.overflow) for b in ck.blocks] == [False, False, True]
    assert all(torch.isfinite(p.grad).all() for p in ck.blocks[0].parameters())


def test_extra_tensor_args_get_true_scale_gradients():
    # A context tensor fed to the branch (e.g. text for cross-attention) must not come back
    # scaled: it enters through the same filter/unscale boundary as x.
    torch.manual_seed(0)
    lin = nn.Linear(D, D)
    gs = ResblockGradScale(lin, init_scale=2.0**10)
    x = torch.randn(3, D, requires_grad=True)
    ctx = torch.randn(3, D, requires_grad=True)

    def branch(h, c, *, bias):
        return lin(h) * c + bias

    bias = torch.randn(D, requires_grad=True)
    grads = []
    for enabled in (False, True):
        gs.enabled = enabled
        for t in (x, ctx, bias):
            t.grad = None
        gs.residual(x, branch, ctx, bias=bias).square().sum().backward()
        grads.append([t.grad.clone() for t in (x, ctx, bias)])
    for a, b in zip(*grads):
        assert torch.equal(a, b)


def test_buffers_stay_float32_and_out_of_model_state_dict():
    model = Stack(n=2)
    names = set(model.state_dict())
    assert not any(".gs." in n for n in names)  # training state is not exported with weights
    # Branch parameters are not duplicated under the gs module either.
    assert not any(n.startswith("blocks.0.gs") for n, _ in model.named_parameters())
    gs = model.blocks[0].gs
    gs.set_scales(2.0**20, 2.0**16)  # not representable in float16 (max 65504)
    model.half()
    assert gs.scale.dtype == torch.float32 and float(gs.scale) == 2.0**20
    assert gs.outer_scale.dtype == torch.float32 and float(gs.outer_scale) == 2.0**16
    assert model.blocks[0].branch.fc1.weight.dtype == torch.float16
    assert gs.overflow.dtype == torch.bool


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        ResblockGradScale(nn.Linear(2, 2), init_scale=0.0)
    with pytest.raises(TypeError):
        ResblockGradScale("not a module")  # type: ignore[arg-type]

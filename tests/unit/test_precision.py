"""Trainer-side mixed precision (tessera.training.precision): autocast, the three gradient
scalers, their JSON state, and the DALL·E per-resblock scaling claim on a real fp16 model."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tessera.errors import CheckpointError, ConfigError
from tessera.nn.gradscale import ResblockGradScale, set_resblock_scaling
from tessera.training.precision import (
    GlobalScaling,
    NoScaling,
    ResblockScaling,
    autocast,
    dalle_paper_settings,
    make_grad_scaling,
)


def _cpu_fp16_autocast_works() -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            y = nn.Linear(2, 2)(torch.ones(1, 2))
        y.float().sum().backward()
        return y.dtype == torch.float16
    except (RuntimeError, AssertionError):
        return False


CPU_FP16_AUTOCAST = _cpu_fp16_autocast_works()


# --------------------------------------------------------------------------------------------
# The key test: a deep residual stack whose per-block gradients span ~12 decades.
# --------------------------------------------------------------------------------------------


class Branch(nn.Module):
    """Residual MLP branch computed in IEEE float16.

    mode "autocast": CPU fp16 autocast does the casts (nn.Linear runs in float16).
    mode "explicit": the same casts written out (inputs and weights .half()); real half
    arithmetic on CPU, used where fp16 autocast is unavailable — and run here as well, so the
    emulation path is tested, not just present. ``reference=True`` computes in float32.
    """

    def __init__(self, d: int, mode: str):
        super().__init__()
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)
        self.mode = mode
        self.reference = False

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.mode == "explicit" and not self.reference:
            a = torch.tanh(F.linear(h.half(), self.fc1.weight.half(), self.fc1.bias.half()))
            return F.linear(a, self.fc2.weight.half(), self.fc2.bias.half())
        return self.fc2(torch.tanh(self.fc1(h)))


class Block(nn.Module):
    def __init__(self, d: int, mode: str):
        super().__init__()
        self.branch = Branch(d, mode)
        self.gs = ResblockGradScale(self.branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gs.residual(x, self.branch)


class DeepStack(nn.Module):
    """n residual blocks with a float32 identity path and a readout after every block.

    The loss weights fall geometrically with depth, w_k = 10**(-decades * k / (n - 1)), so
    the activation gradient reaching block k is ~w_k: the gradient norms decrease from the
    earlier resblocks to the later ones over ``decades`` orders of magnitude — the pattern the
    DALL·E paper reports (Sec. 2.4), exaggerated so it exceeds float16's range. The readouts
    are float32 (fixed projections, no parameters), as the paper keeps its logits in fp32.
    """

    def __init__(self, n: int, d: int, decades: float, mode: str):
        super().__init__()
        self.mode = mode
        self.inp = nn.Linear(d, d)
        self.blocks = nn.ModuleList(Block(d, mode) for _ in range(n))
        self.register_buffer("proj", torch.randn(n, d, d) / d**0.5)  # (n, d, d)
        self.weights = [10.0 ** (-decades * k / (n - 1)) for k in range(n)]

    def set_reference(self, on: bool) -> None:
        for b in self.blocks:
            b.branch.reference = on

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mode == "explicit" and not self.blocks[0].branch.reference:
            h = F.linear(x.half(), self.inp.weight.half(), self.inp.bias.half()).float()
        else:
            h = self.inp(x).float()  # (B, d) float32 identity path
        loss = h.new_zeros(())
        for k, block in enumerate(self.blocks):
            h = block(h)
            with torch.autocast(x.device.type, enabled=False):
                err = h @ self.proj[k] - target[k]  # (B, d) in float32
                loss = loss + self.weights[k] * err.square().sum()
        return loss


def _block_grads(model: DeepStack) -> list[torch.Tensor]:
    return [torch.cat([p.grad.flatten() for p in b.branch.parameters()]) for b in model.blocks]


def _train_scales(model, scaling, x, t, precision, *, calibrate: int) -> list[torch.Tensor]:
    """Let the dynamic scales settle (fast growth), then take the first all-finite step."""

    def step() -> bool:
        model.zero_grad(set_to_none=True)
        with autocast("cpu", precision):
            loss = model(x, t)
        scaling.scale_loss(loss).backward()
        finite = scaling.unscale_(model.parameters())
        scaling.update(finite)
        return finite

    for _ in range(calibrate):
        step()
    # Freeze growth; overflowing scales keep backing off until a step is clean everywhere.
    if isinstance(scaling, GlobalScaling):
        scaling.scaler.set_growth_interval(10**9)
    else:
        scaling.growth_interval = 10**9
    for _ in range(20):
        if step():
            return _block_grads(model)
    raise AssertionError("no finite step")


@pytest.mark.parametrize("mode", ["autocast", "explicit"])
def test_per_resblock_scaling_rescues_blocks_that_underflow_with_one_fp16_scale(mode):
    if mode == "autocast" and not CPU_FP16_AUTOCAST:
        pytest.skip("this torch build has no CPU fp16 autocast; the 'explicit' case covers it")
    n, d, batch = 24, 16, 32
    torch.manual_seed(0)
    model = DeepStack(n, d, decades=12.0, mode=mode)
    x, t = torch.randn(batch, d), torch.randn(n, batch, d)
    precision = "fp16" if mode == "autocast" else "fp32"  # "explicit" casts by itself

    model.set_reference(True)
    model(x, t).backward()
    ref = [g.clone() for g in _block_grads(model)]  # float32 reference
    model.set_reference(False)
    norms = [float(g.norm()) for g in ref]
    assert norms[0] / norms[-1] > 1e10  # the range one fp16 scale cannot hold

    def rel_errors(grads):
        return [float((g - r).norm() / r.norm()) for g, r in zip(grads, ref)]

    # One global fp16 scale (GradScaler): it settles where the earliest block just fits...
    set_resblock_scaling(model, False)
    glob = GlobalScaling("cpu", init_scale=2.0**16, growth_interval=1)
    g_glob = _train_scales(model, glob, x, t, precision, calibrate=30)
    err_glob = rel_errors(g_glob)
    # ...and the latest blocks' gradients underflow to zero: the failure the paper describes.
    assert float(g_glob[-1].abs().max()) == 0.0
    assert max(err_glob) > 0.5
    assert err_glob[0] < 1e-2  # the early blocks are fine with it

    # Per-resblock scales: every block's gradients finite, nonzero and close to fp32.
    res = ResblockScaling(
        model, init_scale=2.0**16, loss_init_scale=2.0**16, growth_interval=1, max_scale=2.0**64
    )
    g_res = _train_scales(model, res, x, t, precision, calibrate=50)
    err_res = rel_errors(g_res)
    for k, g in enumerate(g_res):
        assert torch.isfinite(g).all(), k
        assert (g != 0).float().mean() > 0.99, k
    assert max(err_res) < 1e-2, err_res
    # The scales it found mirror the gradient norms: rising with depth, ~12 decades (~40
    # octaves) from the first block to the last.
    log2 = [math.log2(s) for s in res.scales()]
    assert all(b >= a for a, b in itertools.pairwise(log2))
    assert log2[-1] - log2[0] > 30
    print(
        f"\n[{mode}] global scale 2**{math.log2(glob.loss_scale):.0f}: "
        f"rel err first/last block {err_glob[0]:.1e}/{err_glob[-1]:.1e}, max {max(err_glob):.1e}"
        f"\n[{mode}] per-resblock 2**{log2[0]:.0f}..2**{log2[-1]:.0f}: "
        f"rel err first/last block {err_res[0]:.1e}/{err_res[-1]:.1e}, max {max(err_res):.1e}"
    )


# --------------------------------------------------------------------------------------------
# autocast and the factory
# --------------------------------------------------------------------------------------------


def test_autocast_dtypes_on_cpu():
    lin = nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with autocast("cpu", "fp32"):
        assert lin(x).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert lin(x).dtype == torch.bfloat16
    if CPU_FP16_AUTOCAST:
        with autocast("cpu", "fp16"):
            assert lin(x).dtype == torch.float16
    with pytest.raises(ConfigError):
        autocast("cpu", "fp8")  # type: ignore[arg-type]


class TwoBlocks(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Linear(4, 4)
        self.b1, self.b2 = nn.Linear(4, 4), nn.Linear(4, 4)
        self.gs1 = ResblockGradScale(self.b1)
        self.gs2 = ResblockGradScale(self.b2)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.emb(x).float()
        h = self.gs1.residual(h, self.b1)
        h = self.gs2.residual(h, self.b2)
        return self.head(h).float().sum()


def test_make_grad_scaling_picks_the_implementation_and_toggles_blocks():
    m = TwoBlocks()
    m.gs1.enabled = True  # a stale enabled block must be switched off without per-resblock
    assert isinstance(make_grad_scaling(m, "bf16", "cpu", per_resblock=True), NoScaling)
    assert not m.gs1.enabled
    assert isinstance(make_grad_scaling(m, "fp32", "cpu", per_resblock=False), NoScaling)
    g = make_grad_scaling(m, "fp16", "cpu", per_resblock=False, init_scale=2.0**10)
    assert isinstance(g, GlobalScaling) and g.loss_scale == 2.0**10
    r = make_grad_scaling(m, "fp16", "cpu", per_resblock=True, **dalle_paper_settings(1))
    assert isinstance(r, ResblockScaling) and m.gs1.enabled and m.gs2.enabled
    assert r.scales() == [2.0**13, 2.0**13] and r.names == ["gs1", "gs2"]
    with pytest.raises(ConfigError):
        make_grad_scaling(m, "fp32", "cpu", per_resblock=False, init_scale=2.0)
    with pytest.raises(ConfigError):
        make_grad_scaling(m, "fp8", "cpu", per_resblock=False)  # type: ignore[arg-type]


def test_resblock_scaling_rejects_ambiguous_membership():
    m = TwoBlocks()
    m.gs2 = ResblockGradScale(m.b1)  # b1's parameters claimed by two blocks
    with pytest.raises(ConfigError, match="both"):
        ResblockScaling(m)
    m.gs2 = ResblockGradScale()  # no branch declared: its params would be mis-unscaled
    with pytest.raises(ConfigError, match="no branch"):
        ResblockScaling(m)


# --------------------------------------------------------------------------------------------
# GlobalScaling (GradScaler) and NoScaling — reliability T20 / T21
# --------------------------------------------------------------------------------------------


def _step(scaling, model, x, *, poison: bool = False, reduce=None) -> bool:
    model.zero_grad(set_to_none=True)
    loss = model(x)
    scaling.scale_loss(loss).backward()
    if poison:
        model.head.weight.grad[0, 0] = math.inf
    opt_params = list(model.parameters())
    return scaling.unscale_(opt_params, reduce=reduce) if reduce else scaling.unscale_(opt_params)


def test_global_scaling_inf_skips_and_halves_then_grows_and_roundtrips_json():
    torch.manual_seed(0)
    m = TwoBlocks()
    x = torch.randn(3, 4)
    g = GlobalScaling("cpu", growth_interval=2)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    before = [p.detach().clone() for p in m.parameters()]

    m.zero_grad()
    g.scale_loss(m(x)).backward()
    m.head.weight.grad[0, 0] = math.inf
    finite = g.unscale_(opt)
    assert finite is False
    if finite:
        opt.step()
    g.update(finite)
    assert g.loss_scale == 32768.0  # 65536 -> 32768 (T21)
    assert all(torch.equal(a, p) for a, p in zip(before, m.parameters()))  # step skipped

    # Gradients come back at true scale.
    m.zero_grad()
    m(x).backward()
    ref = [p.grad.clone() for p in m.parameters()]
    assert _step(g, m, x) is True
    for r, p in zip(ref, m.parameters()):
        torch.testing.assert_close(p.grad, r, rtol=1e-6, atol=0)
    g.update(True)
    assert g.loss_scale == 32768.0
    assert _step(g, m, x) is True
    g.update(True)
    assert g.loss_scale == 65536.0  # doubled after growth_interval=2 clean steps

    assert _step(g, m, x) is True
    g.update(True)  # tracker now 1
    state = json.loads(json.dumps(g.state_dict()))
    assert state["grad_scaler"]["_growth_tracker"] == 1
    g2 = GlobalScaling("cpu")
    g2.load_state_dict(state)
    assert g2.state_dict() == g.state_dict()
    with pytest.raises(CheckpointError):
        NoScaling().load_state_dict(state)


def test_global_scaling_order_and_trainer_veto():
    m = TwoBlocks()
    x = torch.randn(3, 4)
    g = GlobalScaling("cpu", init_scale=8.0)
    with pytest.raises(RuntimeError):
        g.update(True)  # update before unscale_
    assert _step(g, m, x) is True
    with pytest.raises(RuntimeError):
        g.unscale_(m.parameters())  # twice in one step
    g.update(False)  # e.g. another rank or a non-finite loss: still backs off
    assert g.loss_scale == 4.0
    # A reduce hook (all-reduce MAX stand-in) reporting another rank's overflow.
    assert _step(g, m, x, reduce=lambda t: t.fill_(1.0)) is False
    g.update(False)
    assert g.loss_scale == 2.0


def test_no_scaling_reports_nonfinite_gradients():
    m = TwoBlocks()
    x = torch.randn(3, 4)
    s = NoScaling()
    assert s.scale_loss(m(x)) is not None and s.loss_scale == 1.0
    assert _step(s, m, x) is True
    assert _step(s, m, x, poison=True) is False
    m.zero_grad()
    (m(x) * float("nan")).backward()
    assert s.unscale_(m.parameters()) is False
    s.update(False)
    assert json.loads(json.dumps(s.state_dict())) == {"kind": "none"}
    with pytest.raises(ValueError, match="no parameter has a gradient"):
        m.zero_grad(set_to_none=True)
        s.unscale_(m.parameters())


# --------------------------------------------------------------------------------------------
# ResblockScaling: growth, windows, distributed agreement, JSON state
# --------------------------------------------------------------------------------------------


def test_resblock_growth_after_interval_and_clamps():
    m = TwoBlocks()
    x = torch.randn(3, 4)
    r = ResblockScaling(
        m, init_scale=2.0**10, loss_init_scale=2.0**4, growth_interval=3, max_scale=2.0**11
    )
    for step in range(3):
        assert r.scales() == [2.0**10] * 2, step
        assert _step(r, m, x) is True
        r.update(True)
    assert r.scales() == [2.0**11] * 2 and r.loss_scale == 2.0**5
    for _ in range(3):
        assert _step(r, m, x) is True
        r.update(True)
    assert r.scales() == [2.0**11] * 2  # clamped at max_scale
    assert r.loss_scale == 2.0**6  # the loss scale is GradScaler-like: no clamp
    assert [float(b.scale) for b in (m.gs1, m.gs2)] == [2.0**11] * 2  # buffers follow
    assert float(m.gs1.outer_scale) == 2.0**6


def test_resblock_backoff_window_and_reduce_agreement():
    m = TwoBlocks()
    x = torch.randn(3, 4)
    r = ResblockScaling(m, init_scale=2.0**10, backoff_window=2, growth_interval=100)

    def other_rank_saw_block0_overflow(t: torch.Tensor) -> None:
        t[0] = torch.maximum(t[0], torch.tensor(1.0))  # stand-in for all_reduce(MAX)

    scales = []
    for _ in range(4):
        assert _step(r, m, x, reduce=other_rank_saw_block0_overflow) is False
        r.update(False)
        scales.append(r.scales())
    # Backoff, then no second backoff within 2 updates, then backoff again.
    assert [s[0] for s in scales] == [2.0**9, 2.0**9, 2.0**9, 2.0**8]
    assert all(s[1] == 2.0**10 for s in scales)  # block 1 never overflowed
    assert r.loss_scale == 2.0**16  # the overflow was attributed to block 0


def test_resblock_unexplained_nonfinite_charges_loss_scale():
    m = TwoBlocks()
    x = torch.randn(3, 4)
    r = ResblockScaling(m, init_scale=2.0**10, loss_init_scale=2.0**8)
    assert _step(r, m, x) is True
    r.update(False)  # the trainer vetoed (e.g. a non-finite clip norm on another rank)
    assert r.loss_scale == 2.0**7 and r.scales() == [2.0**10] * 2
    with pytest.raises(RuntimeError):
        r.update(True)


def test_resblock_state_dict_json_roundtrip_exact():
    torch.manual_seed(0)
    m = TwoBlocks()
    x = torch.randn(3, 4)
    r = ResblockScaling(m, **{**dalle_paper_settings(2), "growth_interval": 2})
    for poison in (False, True, False):
        finite = _step(r, m, x, poison=poison)
        r.update(finite)
    state = r.state_dict()
    text = json.dumps(state)  # plain numbers, strings and lists only
    m2 = TwoBlocks()
    r2 = ResblockScaling(m2)
    r2.load_state_dict(json.loads(text))
    assert r2.state_dict() == state
    assert r2.scales() == r.scales() and r2.loss_scale == r.loss_scale
    assert float(m2.gs1.scale) == float(m.gs1.scale)  # device buffers restored too
    assert float(m2.gs2.outer_scale) == float(torch.tensor(r.loss_scale))  # float32 buffer

    class ThreeBlocks(TwoBlocks):
        def __init__(self):
            super().__init__()
            self.b3 = nn.Linear(4, 4)
            self.gs3 = ResblockGradScale(self.b3)

    with pytest.raises(CheckpointError, match="blocks"):
        ResblockScaling(ThreeBlocks()).load_state_dict(state)
    with pytest.raises(CheckpointError):
        r2.load_state_dict({**state, "scales": "oops"})
    with pytest.raises(CheckpointError):
        r2.load_state_dict({"kind": "global", "grad_scaler": {}})

"""AdamW parameter groups: weight-decay exemptions and per-prefix step-size multipliers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tessera.config.training import TrainConfig
from tessera.errors import ConfigError
from tessera.training.optim import build_adamw, param_groups


class Two(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Linear(3, 4)
        self.decoder = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))


def _names(model: nn.Module, group: dict) -> set[str]:
    ids = {id(p) for p in group["params"]}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_groups_split_by_decay_and_multiplier() -> None:
    model = Two()
    groups = param_groups(model, 0.1, [("decoder.", 3.0)])
    got = {(g["weight_decay"], g["lr_mult"]): _names(model, g) for g in groups}
    assert got == {
        (0.1, 1.0): {"encoder.weight"},
        (0.1, 3.0): {"decoder.0.weight"},
        (0.0, 1.0): {"encoder.bias"},
        (0.0, 3.0): {"decoder.0.bias", "decoder.1.weight", "decoder.1.bias"},
    }
    assert [g["lr_mult"] for g in param_groups(model, 0.1)] == [1.0, 1.0]


def test_trainer_config_parses_lr_mult() -> None:
    cfg = TrainConfig().with_overrides(['lr_mult=["decoder.=3", "encoder.out=0.5"]'])
    assert cfg.lr_multipliers() == [("decoder.", 3.0), ("encoder.out", 0.5)]
    for bad in ("decoder", "=2", "x=0", "x=abc"):
        with pytest.raises(ConfigError, match="PREFIX=FACTOR"):
            TrainConfig(lr_mult=(bad,))


def test_multiplied_group_moves_faster() -> None:
    torch.manual_seed(0)
    model = Two()
    opt = build_adamw(model, lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                      lr_mult=[("decoder.", 3.0)])  # fmt: skip
    for g in opt.param_groups:
        g["lr"] = 1e-2 * g["lr_mult"]  # what the trainer does every step
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.decoder(model.encoder(torch.randn(5, 3))).pow(2).sum().backward()
    opt.step()
    step = {n: (p - before[n]).abs().max().item() for n, p in model.named_parameters()}
    # Adam's first step moves every weight by ~lr.
    assert step["encoder.weight"] == pytest.approx(1e-2, rel=1e-3)
    assert step["decoder.0.weight"] == pytest.approx(3e-2, rel=1e-3)


def test_fused_adamw_resumes_channels_last_weights_exactly(tmp_path) -> None:
    """Moments saved contiguous and loaded beside channels-last weights: the fused kernel walks
    flat memory, so they must get the weights' layout back (the kill -9 regression)."""
    from safetensors.torch import load_file, save_file

    from tessera.training import state

    def build() -> tuple[nn.Module, torch.optim.Optimizer]:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 4, 3)).to(
            memory_format=torch.channels_last
        )
        opt = build_adamw(model, lr=1e-2, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
        assert opt.defaults["fused"]
        return model, opt

    def steps(model: nn.Module, opt: torch.optim.Optimizer, seeds: range) -> None:
        for s in seeds:
            x = torch.randn(2, 3, 9, 9, generator=torch.Generator().manual_seed(s))
            opt.zero_grad()
            model(x.contiguous(memory_format=torch.channels_last)).square().mean().backward()
            opt.step()

    model, opt = build()
    steps(model, opt, range(3))
    tensors, meta = state.optimizer_tensors(opt)
    save_file(tensors, str(tmp_path / "opt.safetensors"))
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    steps(model, opt, range(3, 6))

    again, opt2 = build()
    with torch.no_grad():
        for k, v in again.state_dict().items():
            v.copy_(weights[k])
    state.load_optimizer_tensors(opt2, load_file(str(tmp_path / "opt.safetensors")), meta)
    for p in again.parameters():
        assert opt2.state[p]["exp_avg"].stride() == p.stride()
    steps(again, opt2, range(3, 6))
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)

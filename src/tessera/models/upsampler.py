"""The unCLIP upsamplers (§2.1): the one UNet, conditioned on the low-resolution image only
("we do not condition the upsamplers on the caption, and use unconditional ADM UNets")."""

from __future__ import annotations

import torch
from torch import nn

from tessera.config.upsampler import UpsamplerConfig
from tessera.models.unet import UNet
from tessera.nn import count_parameters


class Upsampler(nn.Module):
    def __init__(self, cfg: UpsamplerConfig) -> None:
        super().__init__()
        self.config = cfg
        self.unet = UNet(cfg.unet)
        # Karlo: the final step (training timestep 0) has a network of its own
        self.unet_last = UNet(cfg.last_unet) if cfg.last_unet is not None else None

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *, low_res: torch.Tensor) -> torch.Tensor:
        """x_t: (B, 3, H, W) in [-1, 1] space (a crop in training); low_res: (B, 3, H/k, W/k)
        in [-1, 1], resized to (H, W) and concatenated. -> raw output. With ``last_unet`` the
        rows at timestep 0 go through it instead."""
        if self.unet_last is None:
            return self.unet(x_t, t, low_res=low_res)
        last = t == 0
        if bool(last.all()):
            return self.unet_last(x_t, t, low_res=low_res)
        if not bool(last.any()):
            return self.unet(x_t, t, low_res=low_res)
        out = self.unet(x_t, t, low_res=low_res)
        out[last] = self.unet_last(x_t[last], t[last], low_res=low_res[last])
        return out


# Table 3 of the paper: the upsamplers' sizes, by preset name.
PAPER_PARAMETERS: dict[str, int] = {"unclip-256": 700_000_000, "unclip-1024": 300_000_000}


def parameter_counts(cfg: UpsamplerConfig) -> dict[str, int]:
    """Parameters by part: ``unet`` and ``total`` (the same: an upsampler is its UNet).
    Built on the meta device, so the paper's sizes allocate nothing."""
    with torch.device("meta"):
        model = Upsampler(cfg)
    return {"unet": count_parameters(model.unet), "total": count_parameters(model)}

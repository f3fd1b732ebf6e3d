"""The one UNet (ADM) of the unCLIP decoder and upsamplers.

Down path: per level ``num_res_blocks`` residual blocks (attention after each where the side
is in ``attention_resolutions``), then a down-sampling residual block; a middle of
ResBlock-Attention-ResBlock; the up path mirrors it with one more block per level, each
taking the matching skip. The conditioning enters through three doors: ``emb`` (added to the
timestep embedding), ``context`` (tokens every attention layer attends to) and ``low_res``
(the super-resolution variant: the low-resolution image, upsampled and concatenated).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.unet import UNetConfig
from tessera.nn.unet import (
    AttentionBlock,
    Downsample,
    GroupNorm32,
    ResBlock,
    Upsample,
    timestep_embedding,
    zero_module,
)


class _Resample(nn.Module):
    """A plain conv resampler where a resampling residual block would be
    (``resblock_updown=False``); takes and ignores the timestep embedding."""

    def __init__(self, op: nn.Module) -> None:
        super().__init__()
        self.op = op

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.op(h)


class _Level(nn.Module):
    """A residual block, optionally followed by attention (one "layer" of a level)."""

    def __init__(self, res: nn.Module, attn: AttentionBlock | None) -> None:
        super().__init__()
        self.res, self.attn = res, attn

    def forward(
        self,
        h: torch.Tensor,
        emb: torch.Tensor,
        context: torch.Tensor | None,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        h = self.res(h, emb)
        return self.attn(h, context, mask) if self.attn is not None else h


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__()
        self.config = cfg
        mc, emb_dim, g = cfg.model_channels, cfg.time_embed_dim, cfg.num_groups
        self.time_embed = nn.Sequential(
            nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )

        def attn(ch: int, side: int) -> AttentionBlock | None:
            if side not in cfg.attention_resolutions:
                return None
            return AttentionBlock(
                ch, head_channels=cfg.num_head_channels, context_dim=cfg.context_dim, groups=g
            )

        def res(ch_in: int, ch_out: int, **kw: bool) -> ResBlock:
            return ResBlock(
                ch_in,
                emb_dim,
                ch_out,
                dropout=cfg.dropout,
                groups=g,
                scale_shift=cfg.scale_shift_norm,
                **kw,
            )

        self.input_conv = nn.Conv2d(cfg.in_channels + cfg.low_res_channels, mc, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch, side = [mc], mc, cfg.image_size
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                self.down.append(_Level(res(ch, mc * mult), attn(mc * mult, side)))
                ch = mc * mult
                skips.append(ch)
            if level < len(cfg.channel_mult) - 1:
                down = res(ch, ch, down=True) if cfg.resblock_updown else _Resample(Downsample(ch))
                self.down.append(_Level(down, None))
                skips.append(ch)
                side //= 2
        mid_attn = (
            AttentionBlock(
                ch, head_channels=cfg.num_head_channels, context_dim=cfg.context_dim, groups=g
            )
            if cfg.attention_resolutions
            else None
        )
        self.middle = nn.ModuleList([_Level(res(ch, ch), mid_attn), _Level(res(ch, ch), None)])
        self.up = nn.ModuleList()
        self.up_is_resample: list[bool] = []
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for _ in range(cfg.num_res_blocks + 1):
                self.up.append(_Level(res(ch + skips.pop(), mc * mult), attn(mc * mult, side)))
                self.up_is_resample.append(False)
                ch = mc * mult
            if level > 0:
                up = res(ch, ch, up=True) if cfg.resblock_updown else _Resample(Upsample(ch))
                self.up.append(_Level(up, None))
                self.up_is_resample.append(True)
                side *= 2
        self.out = nn.Sequential(
            GroupNorm32(g, ch),
            nn.SiLU(),
            zero_module(nn.Conv2d(ch, cfg.out_channels, 3, padding=1)),
        )

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        *,
        emb: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        low_res: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x: (B, in_channels, H, W) noised image; t: (B,) timesteps (original training steps);
        emb: (B, time_embed_dim) added to the timestep embedding; context: (B, L, context_dim)
        with context_mask (B, L) bool (True = attend); low_res: (B, low_res_channels, h, w),
        resized to (H, W) (``low_res_resize``). Returns (B, out_channels, H, W)."""
        cfg = self.config
        e = self.time_embed(timestep_embedding(t, cfg.model_channels).to(x.dtype))  # (B, E)
        if emb is not None:
            e = e + emb.to(e.dtype)
        if cfg.low_res_channels:
            if low_res is None:
                raise ValueError("this super-resolution UNet needs low_res")
            if cfg.low_res_resize == "bicubic_antialias":  # Karlo
                up = F.interpolate(
                    low_res, size=x.shape[-2:], mode="bicubic", align_corners=False, antialias=True
                )
            else:
                up = F.interpolate(low_res, size=x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, up.to(x.dtype)], dim=1)  # (B, in_channels + low_res_channels, H, W)
        h = self.input_conv(x)  # (B, model_channels, H, W)
        hs = [h]  # the skips: one per input-side block, popped in reverse by the output side
        for layer in self.down:
            h = layer(h, e, context, context_mask)
            hs.append(h)
        for layer in self.middle:
            h = layer(h, e, context, context_mask)
        for layer, resample in zip(self.up, self.up_is_resample, strict=True):
            if not resample:
                h = torch.cat([h, hs.pop()], dim=1)  # (B, C + C_skip, h, w)
            h = layer(h, e, context, context_mask)
        return self.out(h)  # (B, out_channels, H, W)

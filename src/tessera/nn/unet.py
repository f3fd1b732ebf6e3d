"""UNet building blocks (ADM, Dhariwal & Nichol 2021 App. A; GLIDE's context attention):
the sinusoidal timestep embedding, residual blocks with scale-shift norm, attention over
pixels plus extra context tokens, and resampling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, *, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps ``t`` (B,) -> (B, dim) float32:
    ``[cos(t * f_k), sin(t * f_k)]`` with ``f_k = max_period ** (-k / (dim // 2))``."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters: residual branches start as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 whatever the autocast dtype (ADM's ``GroupNorm32``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class Downsample(nn.Module):
    """Halve the side: a stride-2 3x3 conv (or 2x2 average pooling when ``conv`` is False)."""

    def __init__(self, channels: int, *, conv: bool = True) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1) if conv else nn.AvgPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class Upsample(nn.Module):
    """Double the side: nearest-neighbour, then (optionally) a 3x3 conv."""

    def __init__(self, channels: int, *, conv: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1) if conv else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return self.conv(x) if self.conv is not None else x


class ResBlock(nn.Module):
    """ADM residual block: GN-SiLU-conv, then ``GN(h) * (1 + scale) + shift`` from the
    timestep embedding (scale-shift norm), SiLU, dropout, a zero-initialised conv; an
    optional 2x down/upsampling of both the path and the skip (BigGAN-style). With
    ``scale_shift=False`` the projected embedding is added before the norm instead
    (``GN(h + emb)``: DDPM's block, ADM's ``use_scale_shift_norm=False``)."""

    def __init__(
        self,
        channels: int,
        emb_dim: int,
        out_channels: int,
        *,
        dropout: float = 0.0,
        groups: int = 32,
        up: bool = False,
        down: bool = False,
        scale_shift: bool = True,
    ) -> None:
        super().__init__()
        self.scale_shift = scale_shift
        self.in_norm = GroupNorm32(groups, channels)
        self.in_conv = nn.Conv2d(channels, out_channels, 3, padding=1)
        self.resample: nn.Module | None = None
        if up:
            self.resample = Upsample(channels, conv=False)
        elif down:
            self.resample = Downsample(channels, conv=False)
        self.emb = nn.Linear(emb_dim, (2 if scale_shift else 1) * out_channels)
        self.out_norm = GroupNorm32(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.out_conv = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = (
            nn.Identity() if channels == out_channels else nn.Conv2d(channels, out_channels, 1)
        )

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.in_norm(x))
        if self.resample is not None:  # resample after the activation, as ADM does
            h, x = self.resample(h), self.resample(x)
        h = self.in_conv(h)
        e = self.emb(F.silu(emb))[:, :, None, None]  # (B, 2C or C, 1, 1)
        if self.scale_shift:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_norm(h) * (1 + scale) + shift
        else:
            h = self.out_norm(h + e)
        h = self.out_conv(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the ``H * W`` pixels, whose keys and values are prefixed with the
    projected context tokens when a context is given (GLIDE's ``encoder_kv``): every pixel
    attends to the pixels and to the context. Projections are ``nn.Linear`` on the
    (B, HW, C) layout (1x1 ``Conv1d``s took PyTorch's slow conv path in fp32 on CPU)."""

    def __init__(
        self, channels: int, *, head_channels: int, context_dim: int = 0, groups: int = 32
    ) -> None:
        super().__init__()
        self.heads = channels // head_channels
        self.norm = GroupNorm32(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.context_kv = nn.Linear(context_dim, 2 * channels) if context_dim else None
        self.proj = zero_module(nn.Linear(channels, channels))

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        b, c, hgt, wid = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        qkv = self.qkv(h).view(b, -1, 3, self.heads, c // self.heads)  # (B, HW, 3, heads, d)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, HW, d)
        mask = None
        if context is not None and self.context_kv is not None:
            # (B, L, 2, heads, d): the context's keys and values (GLIDE's encoder_kv)
            ckv = self.context_kv(context.to(h.dtype)).view(b, -1, 2, self.heads, c // self.heads)
            ck, cv = ckv.permute(2, 0, 3, 1, 4).unbind(0)  # (B, heads, L, d)
            k, v = torch.cat([ck, k], dim=2), torch.cat([cv, v], dim=2)  # (B, heads, L+HW, d)
            if context_mask is not None:
                pixels = context_mask.new_ones(b, hgt * wid)
                mask = torch.cat([context_mask, pixels], dim=1)[:, None, None, :]  # (B,1,1,L+HW)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, heads, HW, d)
        out = self.proj(out.transpose(1, 2).reshape(b, -1, c))  # (B, HW, C)
        return x + out.transpose(1, 2).reshape(b, c, hgt, wid)  # (B, C, H, W)

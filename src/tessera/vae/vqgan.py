"""The VQGAN image tokenizer: taming-transformers' encoder/decoder with a quantised bottleneck.

Module names follow taming-transformers (``encoder.down.0.block.1.norm1``, ``encoder.mid.
attn_1.q``, ``decoder.up.2.upsample.conv``, ``quant_conv``, ``quantize.embedding`` or
``quantize.proj`` / ``quantize.embed``, ``post_quant_conv``), so a taming checkpoint loads by
dropping its training-only ``loss.*`` entries; diffusers' ``VQModel`` layout is renamed onto it
by :mod:`tessera.convert.vqgan`.

Images in and out are ``(B, 3, H, W)`` in [0, 1] (the networks work in [-1, 1], as taming's);
tokens are ``(B, h, w)`` int64 codebook indices, ``h = H / 2**(len(ch_mult) - 1)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.vqgan import VQGANConfig

__all__ = ["VQGAN", "Decoder", "Encoder", "GumbelQuantizer", "NearestQuantizer"]


def _norm(cfg: VQGANConfig, channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(cfg.norm_groups, channels, eps=1e-6, affine=True)


class ResnetBlock(nn.Module):
    """GroupNorm-swish-conv3x3 twice, plus the input (through a 1x1 conv when widths differ)."""

    def __init__(self, cfg: VQGANConfig, c_in: int, c_out: int) -> None:
        super().__init__()
        self.norm1 = _norm(cfg, c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm2 = _norm(cfg, c_out)
        self.dropout = nn.Dropout(cfg.dropout)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return (x if self.nin_shortcut is None else self.nin_shortcut(x)) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the ``h * w`` positions of a feature map (1x1 convs)."""

    def __init__(self, cfg: VQGANConfig, channels: int) -> None:
        super().__init__()
        self.norm = _norm(cfg, channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h = self.norm(x)
        q = self.q(h).flatten(2).transpose(1, 2)  # (B, hw, C)
        k = self.k(h).flatten(2).transpose(1, 2)
        v = self.v(h).flatten(2).transpose(1, 2)
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        y = y.transpose(1, 2).reshape(b, c, hh, ww)
        return x + self.proj_out(y)


class Downsample(nn.Module):
    """Pad right/bottom by one, then a stride-2 3x3 conv (taming's asymmetric padding)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """2x nearest upsampling, then a 3x3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _Mid(nn.Module):
    def __init__(self, cfg: VQGANConfig, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(cfg, channels, channels)
        self.attn_1 = AttnBlock(cfg, channels)
        self.block_2 = ResnetBlock(cfg, channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class _Level(nn.Module):
    """One resolution: ``block`` (ResnetBlocks), ``attn`` (after each block, or empty) and an
    optional ``downsample`` / ``upsample``."""

    def __init__(self, blocks: list[ResnetBlock], attns: list[AttnBlock]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            if len(self.attn):
                x = self.attn[i](x)
        return x


class Encoder(nn.Module):
    """(B, in_channels, H, W) in [-1, 1] -> (B, z_channels, H/f, W/f), ``f = 2**(levels-1)``."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        res = cfg.image_size
        widths_in = [cfg.ch * m for m in (1, *cfg.ch_mult)]
        self.down = nn.ModuleList()
        c = cfg.ch
        for i, m in enumerate(cfg.ch_mult):
            c_in, c_out = widths_in[i], cfg.ch * m
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cfg, c_in, c_out))
                c_in = c_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(cfg, c_out))
            level = _Level(blocks, attns)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = Downsample(c_out)
                res //= 2
            self.down.append(level)
            c = c_out
        self.mid = _Mid(cfg, c)
        self.norm_out = _norm(cfg, c)
        self.conv_out = nn.Conv2d(c, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """(B, z_channels, h, w) -> (B, out_channels, h*f, w*f), roughly in [-1, 1]."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        n = len(cfg.ch_mult)
        c = cfg.ch * cfg.ch_mult[-1]
        res = cfg.image_size // 2 ** (n - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, c, 3, padding=1)
        self.mid = _Mid(cfg, c)
        levels: list[_Level] = []
        for i in reversed(range(n)):  # lowest resolution first; stored highest first
            c_out = cfg.ch * cfg.ch_mult[i]
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cfg, c, c_out))
                c = c_out
                if res in cfg.attn_resolutions:
                    attns.append(AttnBlock(cfg, c_out))
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(c_out)
                res *= 2
            levels.insert(0, level)
        self.up = nn.ModuleList(levels)  # up[0] runs last (taming's indexing)
        self.norm_out = _norm(cfg, c)
        self.conv_out = nn.Conv2d(c, cfg.out_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class NearestQuantizer(nn.Module):
    """taming's / diffusers' ``VectorQuantizer``: the nearest of ``vocab_size`` code vectors."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        nn.init.uniform_(self.embedding.weight, -1.0 / cfg.vocab_size, 1.0 / cfg.vocab_size)

    def codes(self, h: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, h, w) indices of the nearest codes (Euclidean, as diffusers)."""
        b, d, hh, ww = h.shape
        flat = h.permute(0, 2, 3, 1).reshape(-1, d).float()
        idx = torch.cdist(flat, self.embedding.weight.float()).argmin(1)
        return idx.view(b, hh, ww)

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) indices -> (B, D, h, w) code vectors."""
        return self.embedding(tokens).permute(0, 3, 1, 2)


class GumbelQuantizer(nn.Module):
    """taming's ``GumbelQuantize`` (ruDALL-E): a 1x1 conv gives logits over the codebook."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cfg.z_channels, cfg.vocab_size, 1)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)

    def codes(self, h: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, h, w): the argmax of the logits (no Gumbel noise)."""
        return self.proj(h).argmax(1)

    def lookup(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed(tokens).permute(0, 3, 1, 2)


class VQGAN(nn.Module):
    """Encoder + quantizer + decoder. :meth:`encode` / :meth:`decode` map images <-> token
    grids like the dVAE's (:class:`tessera.vae.model.DiscreteVAE`); :meth:`forward` is the
    training pass."""

    FULL_PRECISION = ("quantize.",)  # the code search stays float32 in a float16 release

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        quantizer = NearestQuantizer if cfg.quantizer == "nearest" else GumbelQuantizer
        self.quantize: NearestQuantizer | GumbelQuantizer = quantizer(cfg)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    # -- the maps ------------------------------------------------------------------------------
    def pre_quant(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> quantizer input (B, embed_dim, h, w)."""
        x = 2.0 * images.to(self.quant_conv.weight.dtype) - 1.0
        return self.quant_conv(self.encoder(x))

    def decode_codes(self, z: torch.Tensor) -> torch.Tensor:
        """Code vectors (B, embed_dim, h, w) -> raw decoder output (B, 3, H, W), ~[-1, 1]."""
        return self.decoder(self.post_quant_conv(z))

    # encode / decode run on the module's device and answer on the caller's, so a pipeline
    # whose transformer and VQGAN sit on different devices needs no copies of its own

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 1] -> (B, h, w) int64 tokens (deterministic)."""
        here = self.quant_conv.weight.device
        return self.quantize.codes(self.pre_quant(images.to(here).float())).to(images.device)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 tokens -> (B, 3, H, W) images in [0, 1] (float32)."""
        here = self.quant_conv.weight.device
        x = self.decode_codes(self.quantize.lookup(tokens.to(here))).float()
        return ((x.clamp(-1.0, 1.0) + 1.0) / 2.0).to(tokens.device)

    # -- training ------------------------------------------------------------------------------
    def forward(
        self,
        images: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training pass on images (B, 3, H, W) in [0, 1].

        Returns (reconstruction (B, 3, H, W) in ~[-1, 1], codebook loss (scalar), tokens
        (B, h, w)). ``nearest``: straight-through copy of the nearest codes, loss
        ||sg(z_e) - z_q||^2 + commitment * ||z_e - sg(z_q)||^2 (the VQ-VAE objective).
        ``gumbel``: hard Gumbel-softmax samples (straight-through) at ``gumbel_temperature``,
        noise drawn from ``generator``, loss ``gumbel_kl_weight`` * KL(softmax(logits) ||
        uniform) per position.
        """
        cfg = self.config
        h = self.pre_quant(images)
        if isinstance(self.quantize, NearestQuantizer):
            tokens = self.quantize.codes(h.detach())
            z_q = self.quantize.lookup(tokens).to(h.dtype)
            loss = F.mse_loss(z_q, h.detach()) + cfg.commitment * F.mse_loss(h, z_q.detach())
            z = h + (z_q - h).detach()
        else:
            logits = self.quantize.proj(h).float()  # (B, K, h, w)
            u = torch.rand(logits.shape, generator=generator, device=logits.device)
            gumbel = -torch.log(-torch.log(u.clamp_min(1e-20)).clamp_min(1e-20))
            soft = F.softmax((logits + gumbel) / cfg.gumbel_temperature, dim=1)
            tokens = soft.argmax(1)
            hard = F.one_hot(tokens, cfg.vocab_size).permute(0, 3, 1, 2).to(soft.dtype)
            one_hot = hard + soft - soft.detach()
            z = torch.einsum("bkhw,kd->bdhw", one_hot, self.quantize.embed.weight.float())
            z = z.to(h.dtype)
            log_q = F.log_softmax(logits, dim=1)
            kl = (log_q.exp() * (log_q + math.log(cfg.vocab_size))).sum(1).mean()
            loss = cfg.gumbel_kl_weight * kl
        return self.decode_codes(z), loss, tokens

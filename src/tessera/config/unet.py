"""Config of the one UNet (ADM, Dhariwal & Nichol 2021) behind the unCLIP decoder and the
upsamplers; the super-resolution variant is the same network with extra input channels."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from tessera.config.base import Config, register_preset
from tessera.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class UNetConfig(Config):
    """An ADM UNet: residual blocks with scale-shift norm, a timestep embedding, attention at
    chosen resolutions (optionally also over extra context tokens).

    image_size: side in pixels the network is built for (attention resolutions refer to it;
      convolutions run at any size divisible by ``2 ** (len(channel_mult) - 1)``).
    in_channels / out_channels: image channels in and out (out is 2x when the variance is
      learned; the decoder sets it from its diffusion config).
    model_channels: width of the first level; level ``i`` has ``model_channels *
      channel_mult[i]`` channels; the timestep embedding is ``4 * model_channels`` wide.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attention_resolutions: sides in pixels (e.g. ``(32, 16, 8)``) whose blocks attend; empty
      for the upsamplers (the paper's have no attention), and then the middle has none either.
    num_head_channels: channels per attention head (paper: 64).
    dropout: inside residual blocks (paper: 0.1 for the decoder and the first upsampler).
    context_dim: width of extra context tokens every attention layer also attends to (GLIDE's
      text sequence, unCLIP's 4 CLIP tokens); 0 = none.
    low_res_channels: super-resolution: channels of the low-resolution image, upsampled to the
      input size and concatenated to it (guided-diffusion's ``SuperResModel``); 0 = none.
    num_groups: GroupNorm groups (ADM: 32); every level's width must be divisible by it.
    resblock_updown: down/upsample with residual blocks (ADM/BigGAN) instead of plain convs.
    scale_shift_norm: the timestep embedding scales and shifts the second GroupNorm's output
      (ADM's ``use_scale_shift_norm``); False adds it before that norm (DDPM; Karlo's
      super-resolution UNets).
    low_res_resize: how the low-resolution image is resized to the input size: ``bilinear``
      (guided-diffusion's ``SuperResModel``) or ``bicubic_antialias`` (Karlo, as diffusers'
      unCLIP pipeline does it).
    """

    kind: ClassVar[str] = "unet"

    image_size: int = 64
    in_channels: int = 3
    out_channels: int = 3
    model_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (32, 16, 8)
    num_head_channels: int = 64
    dropout: float = 0.0
    context_dim: int = 0
    low_res_channels: int = 0
    num_groups: int = 32
    resblock_updown: bool = True
    scale_shift_norm: bool = True
    low_res_resize: Literal["bilinear", "bicubic_antialias"] = "bilinear"

    @property
    def time_embed_dim(self) -> int:
        return 4 * self.model_channels

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.channel_mult) - 1)

    def validate(self) -> None:
        for name in ("image_size", "in_channels", "out_channels", "model_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"unet.{name} must be >= 1, got {getattr(self, name)}")
        if not self.channel_mult or min(self.channel_mult) < 1:
            raise ConfigError("unet.channel_mult must be a non-empty tuple of ints >= 1")
        if self.num_res_blocks < 1:
            raise ConfigError(f"unet.num_res_blocks must be >= 1, got {self.num_res_blocks}")
        if self.image_size % self.downsample_factor:
            raise ConfigError(
                f"unet.image_size {self.image_size} is not divisible by "
                f"2**(len(channel_mult) - 1) = {self.downsample_factor}"
            )
        sides = {self.image_size // 2**i for i in range(len(self.channel_mult))}
        bad = [r for r in self.attention_resolutions if r not in sides]
        if bad:
            raise ConfigError(
                f"unet.attention_resolutions {bad} are not sides of this UNet "
                f"(sides: {sorted(sides, reverse=True)})"
            )
        for m in self.channel_mult:
            width = self.model_channels * m
            if self.num_groups < 1 or width % self.num_groups:
                raise ConfigError(
                    f"unet: width {width} is not divisible by num_groups {self.num_groups}"
                )
            if self.attention_resolutions and width % self.num_head_channels:
                raise ConfigError(
                    f"unet: width {width} is not divisible by num_head_channels "
                    f"{self.num_head_channels}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"unet.dropout must be in [0, 1), got {self.dropout}")
        if self.context_dim < 0 or self.low_res_channels < 0:
            raise ConfigError("unet.context_dim and unet.low_res_channels must be >= 0")


@register_preset("unet", "tiny")
def _tiny() -> UNetConfig:
    return UNetConfig(
        image_size=16,
        model_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(8,),
        num_head_channels=8,
        num_groups=8,
    )

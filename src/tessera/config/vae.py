"""Config of the discrete VAE (stage 1): architecture and the relaxed-ELB schedules."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from tessera.config.base import Config
from tessera.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class VAEConfig(Config):
    """The dVAE of the paper and of OpenAI's released ``dall-e`` package.

    image_size: side of the (square) input image in pixels.
    n_hid: width of the first encoder group / last decoder group (paper 256); group i is
      ``n_hid * 2**i`` wide (encoder), mirrored in the decoder.
    n_blk_per_group / group_count: residual blocks per group (2) and groups (4); the grid of
      tokens is ``image_size / 2**(group_count - 1)`` on a side.
    vocab_size: codebook size K (paper 8192).
    n_init: decoder width after the input 1x1 convolution (paper 128).
    logit_laplace_eps: epsilon of the pixel mapping (paper 0.1).
    temp_start / temp_end / temp_steps: gumbel-softmax temperature, cosine 1 -> 1/16 over 150k.
    kl_weight / kl_steps: beta, cosine 0 -> 6.6 over the first 5k updates.
    kl_start: beta at update 0 (paper 0); the cosine runs kl_start -> kl_weight.
    """

    kind: ClassVar[str] = "vae"

    image_size: int = 256
    n_hid: int = 256
    n_blk_per_group: int = 2
    group_count: int = 4
    vocab_size: int = 8192
    n_init: int = 128
    input_channels: int = 3
    logit_laplace_eps: float = 0.1
    temp_start: float = 1.0
    temp_end: float = 1.0 / 16
    temp_steps: int = 150_000
    kl_weight: float = 6.6
    kl_steps: int = 5000
    kl_start: float = 0.0

    @property
    def downsample(self) -> int:
        return 2 ** (self.group_count - 1)

    @property
    def grid_size(self) -> int:
        """Tokens per side: image_size / 2**(group_count - 1)."""
        return self.image_size // self.downsample

    def validate(self) -> None:
        if self.group_count < 1 or self.n_blk_per_group < 1:
            raise ConfigError("vae: group_count and n_blk_per_group must be >= 1")
        if self.image_size % self.downsample:
            raise ConfigError(
                f"vae.image_size {self.image_size} is not divisible by 2**(group_count-1) "
                f"= {self.downsample}"
            )
        if self.n_hid < 4 or self.n_hid % 4:
            raise ConfigError(f"vae.n_hid must be a positive multiple of 4, got {self.n_hid}")
        if self.n_init < 4 or self.n_init % 4:
            raise ConfigError(f"vae.n_init must be a positive multiple of 4, got {self.n_init}")
        if self.vocab_size < 2:
            raise ConfigError(f"vae.vocab_size must be >= 2, got {self.vocab_size}")
        if not 0.0 < self.logit_laplace_eps < 0.5:
            raise ConfigError("vae.logit_laplace_eps must be in (0, 0.5)")
        if not (self.temp_start > 0 and self.temp_end > 0):
            raise ConfigError("vae: temperatures must be > 0")
        if self.kl_weight < 0 or self.kl_start < 0 or self.temp_steps < 0 or self.kl_steps < 0:
            raise ConfigError("vae: kl_weight, kl_start, temp_steps and kl_steps must be >= 0")

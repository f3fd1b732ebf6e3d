"""Config of the unCLIP upsamplers (Ramesh et al. 2022 §2.1, App. C): the one UNet with the
low-resolution image as extra input channels, no attention, trained on random crops."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from tessera.config.base import Config, register_preset
from tessera.config.diffusion import DiffusionConfig
from tessera.config.training import TrainConfig
from tessera.config.unet import UNetConfig
from tessera.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class UpsamplerConfig(Config):
    """A diffusion super-resolution model ``low_res_size`` -> ``unet.image_size``.

    unet: the network; ``low_res_channels`` 3 and no attention (paper: "we do not use
      attention"), so it runs at any size and can train on crops.
    diffusion: the process (paper: cosine for 64->256, linear for 256->1024).
    low_res_size: side of the conditioning image at full size.
    degradation: corruption of the conditioning image in training: ``blur`` (stage 1:
      Gaussian blur, kernel ``blur_kernel``, sigma ``blur_sigma``) or ``bsr`` (stage 2:
      BSR-style blur, resize, noise and JPEG); applied with probability ``corrupt_prob``.
    crop_size: training crop side at the target resolution (paper: a quarter of it, e.g. 64
      for 256); 0 trains on whole images. Inference always runs on the whole image.
    last_unet: a second network for the final denoising step, the one at training timestep 0
      that every respaced schedule ends on (Karlo's ``super_res_last``, fine-tuned for that
      step); None (the paper): one network for every step.
    """

    kind: ClassVar[str] = "upsampler"

    unet: UNetConfig
    diffusion: DiffusionConfig = dataclasses.field(default_factory=DiffusionConfig)
    low_res_size: int = 64
    degradation: Literal["blur", "bsr"] = "blur"
    blur_kernel: int = 3
    blur_sigma: float = 0.6
    corrupt_prob: float = 0.5
    crop_size: int = 0
    last_unet: UNetConfig | None = None

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    @property
    def scale(self) -> int:
        return self.unet.image_size // self.low_res_size

    def validate(self) -> None:
        u = self.unet
        if u.low_res_channels != 3 or u.in_channels != 3:
            raise ConfigError("upsampler.unet needs in_channels 3 and low_res_channels 3")
        if u.out_channels != 3 * self.diffusion.out_channels_factor:
            raise ConfigError(
                f"upsampler.unet.out_channels must be {3 * self.diffusion.out_channels_factor}"
            )
        if u.attention_resolutions or u.context_dim:
            raise ConfigError("upsampler.unet has no attention and no context (paper §2.1)")
        if self.low_res_size < 1 or u.image_size % self.low_res_size or self.scale < 2:
            raise ConfigError(
                f"upsampler: image_size {u.image_size} must be a multiple (>= 2x) of "
                f"low_res_size {self.low_res_size}"
            )
        if self.blur_kernel < 1 or self.blur_kernel % 2 == 0 or not self.blur_sigma > 0:
            raise ConfigError("upsampler: blur_kernel must be odd >= 1 and blur_sigma > 0")
        if not 0.0 <= self.corrupt_prob <= 1.0:
            raise ConfigError(f"upsampler.corrupt_prob must be in [0, 1], got {self.corrupt_prob}")
        last = self.last_unet
        if last is not None and (
            (last.image_size, last.in_channels, last.out_channels, last.low_res_channels)
            != (u.image_size, u.in_channels, u.out_channels, u.low_res_channels)
            or last.attention_resolutions
            or last.context_dim
        ):
            raise ConfigError(
                "upsampler.last_unet must take and make what unet does (sizes, channels, no "
                "attention)"
            )
        if self.crop_size:
            unit = max(u.downsample_factor, self.scale)
            if self.crop_size > u.image_size or self.crop_size % unit:
                raise ConfigError(
                    f"upsampler.crop_size {self.crop_size} must be <= {u.image_size} and a "
                    f"multiple of {unit}"
                )


def _unet(size: int, mc: int, mult: tuple[int, ...], blocks: int, **kw: float) -> UNetConfig:
    return UNetConfig(
        image_size=size,
        model_channels=mc,
        channel_mult=mult,
        num_res_blocks=blocks,
        attention_resolutions=(),
        low_res_channels=3,
        **kw,
    )


# The shapes upsamplers sample in 7 DDIM steps: v-prediction (Salimans & Ho 2022) instead of
# the paper's eps, whose x0 estimate at the first, noisiest step (abar ~ 1e-5 with cosine) is
# the prediction error amplified ~300x: measured, eps left tinted backgrounds (16.8 dB PSNR
# after 1000 updates of shapes-64).
_FEW_STEP = DiffusionConfig(prediction="v")


@register_preset("upsampler", "tiny")
def _tiny() -> UpsamplerConfig:
    return UpsamplerConfig(
        unet=_unet(32, 16, (1, 2), 1, num_groups=8), low_res_size=16, crop_size=16
    )


@register_preset("upsampler", "tiny-64")
def _tiny_64() -> UpsamplerConfig:
    # after the tiny decoder (32 px) in the tiny-unclip recipe
    return UpsamplerConfig(
        unet=_unet(64, 16, (1, 2), 1, num_groups=8),
        diffusion=_FEW_STEP,
        low_res_size=32,
        crop_size=16,
    )


@register_preset("upsampler", "shapes-64")
def _shapes_64() -> UpsamplerConfig:
    # stage 1 of shapes: 32 -> 64, trained on 16 px crops (a quarter of the side)
    return UpsamplerConfig(
        unet=_unet(64, 32, (1, 2), 2, num_groups=16),
        diffusion=_FEW_STEP,
        low_res_size=32,
        crop_size=16,
    )


@register_preset("upsampler", "shapes-128")
def _shapes_128() -> UpsamplerConfig:
    # stage 2 of shapes: 64 -> 128 with the BSR degradation, trained on 32 px crops
    return UpsamplerConfig(
        unet=_unet(128, 32, (1, 1, 2), 1, num_groups=16),
        diffusion=_FEW_STEP,
        low_res_size=64,
        degradation="bsr",
        crop_size=32,
    )


@register_preset("upsampler", "unclip-256")
def _paper_256() -> UpsamplerConfig:
    # Table 3: 64 -> 256, 320 ch, depth 3, mults 1,2,3,4, dropout 0.1, cosine; 64 px crops
    return UpsamplerConfig(
        unet=_unet(256, 320, (1, 2, 3, 4), 3, dropout=0.1),
        low_res_size=64,
        crop_size=64,
    )


@register_preset("upsampler", "unclip-1024")
def _paper_1024() -> UpsamplerConfig:
    # Table 3: 256 -> 1024, 192 ch, depth 2, mults 1,1,2,2,4,4, linear; 256 px crops; BSR
    return UpsamplerConfig(
        unet=_unet(1024, 192, (1, 1, 2, 2, 4, 4), 2),
        diffusion=DiffusionConfig(schedule="linear"),
        low_res_size=256,
        degradation="bsr",
        crop_size=256,
    )


# -- training recipes ("train.upsampler"), one per model preset --------------------------


def _train(steps: int, batch: int, lr: float, **kw: object) -> TrainConfig:
    return TrainConfig(
        steps=steps,
        batch_size=batch,
        lr=lr,
        lr_schedule="warmup_cosine",
        warmup_steps=min(100, steps // 10),
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        grad_clip=1.0,
        **kw,  # type: ignore[arg-type]
    )


@register_preset("train.upsampler", "tiny")
def _train_tiny() -> TrainConfig:
    return _train(30, 8, 1e-3, ema_decay=0.9, checkpoint_every=15)


@register_preset("train.upsampler", "tiny-64")
def _train_tiny_64() -> TrainConfig:
    return _train(10, 8, 1e-3, ema_decay=0.9, checkpoint_every=10)


@register_preset("train.upsampler", "shapes-64")
def _train_shapes_64() -> TrainConfig:
    return _train(
        1500,
        32,
        5e-4,
        lr_end=1e-5,
        ema_decay=0.995,
        precision="bf16",
        checkpoint_every=250,
        sample_every=500,
    )


@register_preset("train.upsampler", "shapes-128")
def _train_shapes_128() -> TrainConfig:
    return _train(
        1500,
        32,
        5e-4,
        lr_end=1e-5,
        ema_decay=0.995,
        precision="bf16",
        checkpoint_every=250,
        sample_every=500,
    )


@register_preset("train.upsampler", "unclip-256")
def _train_paper_256() -> TrainConfig:
    # Table 3: batch 1024, 1M iterations, lr 1.2e-4, EMA 0.9999
    return _train(1_000_000, 16, 1.2e-4, ema_decay=0.9999, precision="bf16")


@register_preset("train.upsampler", "unclip-1024")
def _train_paper_1024() -> TrainConfig:
    # Table 3: batch 512, 1M iterations, lr 1.0e-4, EMA 0.9999
    return _train(1_000_000, 8, 1.0e-4, ema_decay=0.9999, precision="bf16")

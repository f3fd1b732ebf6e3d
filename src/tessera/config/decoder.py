"""Config of the unCLIP decoder (Ramesh et al. 2022 §2.1): a GLIDE-style diffusion UNet that
turns a CLIP image embedding (and, optionally, the caption) into a 64x64 image."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from tessera.config.base import Config, register_preset
from tessera.config.clip import CLIPConfig
from tessera.config.diffusion import DiffusionConfig
from tessera.config.training import TrainConfig
from tessera.config.unet import UNetConfig
from tessera.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class DecoderConfig(Config):
    """The decoder: one UNet, its diffusion process, and the two conditioning paths.

    unet: the network (``context_dim`` > 0: the CLIP tokens and caption are attended;
      ``out_channels`` = 3 x the diffusion's ``out_channels_factor``).
    diffusion: the process (paper: cosine, 1000 steps, learned Σ).
    clip_dim: width of the CLIP image embedding z_i (ViT-H/16: 1024).
    clip_tokens: context tokens projected from z_i (paper: 4).
    vocab_size / text_length: caption ids in ``[0, vocab_size)``, up to ``text_length`` of
      them (tessera's BPE: ``<pad>`` = 0 marks padding, replaced by a learned embedding per
      position as in GLIDE).
    text_width / text_layers / text_heads: the caption transformer (GLIDE: 2048 / 24 / 32);
      ``text_layers`` 0 drops the caption path (the decoder then sees z_i only).
    clip_dropout: training probability of replacing z_i by a learned null embedding (10%).
    text_dropout: training probability of dropping the caption (50%).
    text_encoder: ``glide`` (the paper): the decoder's own caption transformer above;
      ``clip`` (Karlo): the frozen CLIP text encoder ``clip_text`` (the decoder owns a copy of
      its text tower) -- its final hidden states, projected and layer-normed, follow the 4
      image tokens, padding masked, and its text embedding z_t is projected and added to the
      timestep embedding beside z_i's; a dropped caption is CLIP's encoding of the empty text.
    clip_text: the CLIP whose text tower ``text_encoder="clip"`` reads (its ``embed_dim`` must
      equal ``clip_dim``; its ``context_length`` is ``text_length``).
    clip_input: ``unit_sqrt_dim`` (tessera's paper models): z_i is L2-normalised and scaled by
      sqrt(clip_dim); ``raw`` (Karlo): z_i is used as CLIP's projection makes it, unnormalised.
    """

    kind: ClassVar[str] = "decoder"

    unet: UNetConfig
    diffusion: DiffusionConfig = dataclasses.field(
        default_factory=lambda: DiffusionConfig(variance="learned_range")
    )
    clip_dim: int = 1024
    clip_tokens: int = 4
    vocab_size: int = 16384
    text_length: int = 128
    text_width: int = 2048
    text_layers: int = 24
    text_heads: int = 32
    clip_dropout: float = 0.1
    text_dropout: float = 0.5
    text_encoder: Literal["glide", "clip"] = "glide"
    clip_text: CLIPConfig | None = None
    clip_input: Literal["unit_sqrt_dim", "raw"] = "unit_sqrt_dim"

    @property
    def image_size(self) -> int:
        return self.unet.image_size

    @property
    def has_text(self) -> bool:
        """Whether the decoder reads a caption (through either text encoder)."""
        return self.text_encoder == "clip" or self.text_layers > 0

    def validate(self) -> None:
        if self.unet.context_dim < 1:
            raise ConfigError("decoder.unet.context_dim must be >= 1 (the CLIP tokens attend)")
        want = 3 * self.diffusion.out_channels_factor
        if self.unet.in_channels != 3 or self.unet.out_channels != want:
            raise ConfigError(
                f"decoder.unet needs in_channels 3 and out_channels {want} "
                f"(variance {self.diffusion.variance!r})"
            )
        if self.unet.low_res_channels:
            raise ConfigError("decoder.unet.low_res_channels must be 0 (that is an upsampler)")
        for name in ("clip_dim", "clip_tokens", "vocab_size", "text_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"decoder.{name} must be >= 1, got {getattr(self, name)}")
        if self.text_layers < 0:
            raise ConfigError(f"decoder.text_layers must be >= 0, got {self.text_layers}")
        if (
            self.text_encoder == "glide"
            and self.has_text
            and (self.text_width < 1 or self.text_heads < 1 or self.text_width % self.text_heads)
        ):
            raise ConfigError(
                f"decoder.text_width {self.text_width} is not divisible by text_heads "
                f"{self.text_heads}"
            )
        if self.text_encoder == "clip":
            ct = self.clip_text
            if ct is None:
                raise ConfigError("decoder.text_encoder 'clip' needs decoder.clip_text")
            if ct.embed_dim != self.clip_dim or ct.context_length != self.text_length:
                raise ConfigError(
                    f"decoder.clip_text makes {ct.embed_dim}-d embeddings over "
                    f"{ct.context_length} tokens; the decoder has clip_dim {self.clip_dim} and "
                    f"text_length {self.text_length}"
                )
        for name in ("clip_dropout", "text_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"decoder.{name} must be in [0, 1), got {getattr(self, name)}")


@register_preset("decoder", "tiny")
def _tiny() -> DecoderConfig:
    # the tiny CLIP (embed 16, 32 px) and tokenizer (vocab 300, 16 tokens)
    return DecoderConfig(
        unet=UNetConfig(
            image_size=32,
            out_channels=6,
            model_channels=16,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_resolutions=(8,),
            num_head_channels=8,
            num_groups=8,
            context_dim=32,
        ),
        diffusion=DiffusionConfig(variance="learned_range", loss_weighting="min_snr"),
        clip_dim=16,
        vocab_size=300,
        text_length=16,
        text_width=32,
        text_layers=1,
        text_heads=2,
    )


@register_preset("decoder", "shapes")
def _shapes() -> DecoderConfig:
    # 32 px (the shapes CLIP's input size), the shapes CLIP (embed 128) and tokenizer (vocab
    # 512, 32 tokens). Widths 32/64/128 with attention at 8 px only: 0.65 s per bf16 update
    # of 64 on 2 cores, against 1.9 s for 64/128/128 with attention at 16 and 8 (measured).
    # min-SNR-5 weighting (Hang et al. 2023, beyond the paper) for a short CPU run.
    return DecoderConfig(
        unet=UNetConfig(
            image_size=32,
            out_channels=6,
            model_channels=32,
            channel_mult=(1, 2, 4),
            num_res_blocks=2,
            attention_resolutions=(8,),
            num_head_channels=32,
            num_groups=16,
            context_dim=128,
        ),
        # v-prediction (Salimans & Ho 2022; the paper's decoder predicts eps): its x0 estimate
        # stays bounded at high noise, where eps's is amplified by 1/sqrt(abar) -- what 25
        # DDIM steps of a small, briefly trained model need. Learned variance as the paper.
        diffusion=DiffusionConfig(
            prediction="v", variance="learned_range", loss_weighting="min_snr"
        ),
        clip_dim=128,
        vocab_size=512,
        text_length=32,
        text_width=128,
        text_layers=2,
        text_heads=4,
    )


@register_preset("decoder", "unclip")
def _paper() -> DecoderConfig:
    # Table 3 / App. C: GLIDE's 3.5B model at 64 px (512 ch, depth 3, mults 1,2,3,4,
    # attention at 32/16/8 with 64 channels per head, dropout 0.1, learned Σ) with GLIDE's
    # text transformer (2048 wide, 24 layers, 128 tokens) and ViT-H/16 embeddings (1024).
    return DecoderConfig(
        unet=UNetConfig(
            image_size=64,
            out_channels=6,
            model_channels=512,
            channel_mult=(1, 2, 3, 4),
            num_res_blocks=3,
            attention_resolutions=(32, 16, 8),
            num_head_channels=64,
            dropout=0.1,
            context_dim=2048,
        ),
        diffusion=DiffusionConfig(variance="learned_range"),
        clip_dim=1024,
        vocab_size=50257,
        text_length=128,
        text_width=2048,
        text_layers=24,
        text_heads=32,
    )


# -- training recipes ("train.decoder"), one per model preset ----------------------------


@register_preset("train.decoder", "tiny")
def _train_tiny() -> TrainConfig:
    return TrainConfig(
        steps=40,
        batch_size=8,
        lr=1e-3,
        warmup_steps=5,
        betas=(0.9, 0.999),
        weight_decay=0.0,
        grad_clip=1.0,
        ema_decay=0.9,
        checkpoint_every=20,
    )


@register_preset("train.decoder", "shapes")
def _train_shapes() -> TrainConfig:
    # bf16 autocast (3x faster than fp32 here); a short run: lr 3e-4 (paper 1.2e-4 at batch
    # 2048), EMA 0.999 instead of 0.9999 (unclip.md: short runs).
    return TrainConfig(
        steps=4000,
        batch_size=48,
        lr=3e-4,
        lr_end=1e-5,
        lr_schedule="warmup_cosine",
        warmup_steps=200,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        grad_clip=1.0,
        ema_decay=0.999,
        precision="bf16",
        checkpoint_every=250,
        sample_every=1000,
    )


@register_preset("train.decoder", "unclip")
def _train_paper() -> TrainConfig:
    # Table 3: batch 2048 (here 32 per process on 64 processes), 800K iterations, lr 1.2e-4,
    # Adam (0.9, 0.999, 1e-8), no weight decay, EMA 0.9999.
    return TrainConfig(
        steps=800_000,
        batch_size=32,
        lr=1.2e-4,
        lr_schedule="constant",
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0.0,
        grad_clip=1.0,
        ema_decay=0.9999,
        precision="bf16",
        checkpoint_every=2000,
    )

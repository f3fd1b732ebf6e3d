"""Config of the VQGAN image tokenizer (Esser et al., "Taming Transformers", 2021): the
taming-transformers encoder/decoder with a vector-quantised bottleneck, and its losses.

Beyond the DALL·E paper, which tokenizes with the dVAE (:mod:`tessera.config.vae`): ruDALL-E
(Malevich) tokenizes 256 px images into 32 x 32 of 8192 codes with a Gumbel VQGAN, and other
DALL·E reimplementations offer VQGAN tokenizers too. A VQGAN checkpoint plugs into the DALL·E
stage and pipeline wherever a dVAE does (same ``encode`` / ``decode`` / ``image_size`` /
``grid_size`` / ``vocab_size``).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from tessera.config.base import Config, register_preset
from tessera.config.training import TrainConfig
from tessera.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class VQGANConfig(Config):
    """The taming-transformers ``Encoder`` / ``Decoder`` + quantizer, field for field.

    Architecture (taming ``ddconfig`` names in brackets; diffusers ``VQModel`` names after):
    image_size [resolution]: side of the square input in pixels (diffusers ``sample_size``).
    in_channels / out_channels [in_channels / out_ch]: image channels (3).
    ch / ch_mult [ch, ch_mult]: level ``i`` is ``ch * ch_mult[i]`` wide (diffusers
      ``block_out_channels``); ``len(ch_mult) - 1`` 2x downsamplings, so the token grid is
      ``image_size / 2**(len(ch_mult) - 1)`` on a side.
    num_res_blocks [num_res_blocks]: residual blocks per encoder level; the decoder has one more
      per level (diffusers ``layers_per_block``).
    attn_resolutions [attn_resolutions]: feature-map sides at which every block of a level is
      followed by self-attention (ruDALL-E's Sber VQGAN: (32,); diffusers' ``VQModel`` with
      ``DownEncoderBlock2D`` blocks: none). The middle of both networks always has one.
    z_channels / embed_dim [z_channels, embed_dim]: encoder output width and codebook vector
      width (diffusers ``latent_channels`` / ``vq_embed_dim``).
    vocab_size [n_embed]: codebook size (diffusers ``num_vq_embeddings``).
    norm_groups: GroupNorm groups (taming: 32; diffusers ``norm_num_groups``).
    dropout [dropout]: residual-block dropout (0).
    quantizer: ``nearest`` (taming ``VectorQuantizer``, diffusers ``VectorQuantizer``: each
      position snaps to its nearest code) or ``gumbel`` (taming ``GumbelQuantize``, ruDALL-E:
      a 1x1 conv gives logits over the codebook; tokens are their argmax -- ruDALL-E adds
      Gumbel noise even at inference, tessera encodes deterministically).

    Training (``tessera vqgan train``): ``l1_weight`` * |x - x_rec| + ``perceptual_weight`` *
    perceptual distance + codebook loss (``nearest``: ||sg(z_e) - z_q||^2 + ``commitment`` *
    ||z_e - sg(z_q)||^2; ``gumbel``: ``gumbel_kl_weight`` * KL(q || uniform) with straight-through
    Gumbel-softmax samples at ``gumbel_temperature``) + ``adversarial_weight`` * hinge GAN loss
    from a PatchGAN discriminator (``disc_layers`` strided convs of ``disc_channels``) from update
    ``adversarial_start`` on (0 weight: off, the CPU presets).
    perceptual: the network the perceptual distance is measured in, one tessera builds without
      downloads: ``shapes-clip`` (the vision tower of the CLIP shipped with tessera's shapes
      pipeline, applied to 32 x 32 tiles; see :mod:`tessera.training.stages.vqgan`) or ``none``.
    """

    kind: ClassVar[str] = "vqgan"

    image_size: int = 256
    in_channels: int = 3
    out_channels: int = 3
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 1, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    z_channels: int = 256
    embed_dim: int = 256
    vocab_size: int = 8192
    norm_groups: int = 32
    dropout: float = 0.0
    quantizer: Literal["nearest", "gumbel"] = "gumbel"
    # -- training ------------------------------------------------------------------------------
    l1_weight: float = 1.0
    perceptual: Literal["shapes-clip", "none"] = "shapes-clip"
    perceptual_weight: float = 1.0
    commitment: float = 0.25
    gumbel_kl_weight: float = 5e-4
    gumbel_temperature: float = 1.0
    adversarial_weight: float = 0.0
    adversarial_start: int = 0
    disc_layers: int = 3
    disc_channels: int = 64

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        """Tokens per side: image_size / 2**(len(ch_mult) - 1)."""
        return self.image_size // self.downsample

    def validate(self) -> None:
        if not self.ch_mult or any(m < 1 for m in self.ch_mult):
            raise ConfigError("vqgan.ch_mult must be a non-empty tuple of positive integers")
        if self.image_size % self.downsample:
            raise ConfigError(
                f"vqgan.image_size {self.image_size} is not divisible by 2**(len(ch_mult)-1) "
                f"= {self.downsample}"
            )
        for name in ("in_channels", "out_channels", "ch", "num_res_blocks", "z_channels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"vqgan.{name} must be >= 1, got {getattr(self, name)}")
        if self.embed_dim < 1 or self.vocab_size < 2:
            raise ConfigError("vqgan: embed_dim must be >= 1 and vocab_size >= 2")
        widths = {self.ch * m for m in self.ch_mult}
        if self.norm_groups < 1 or any(w % self.norm_groups for w in widths):
            raise ConfigError(
                f"vqgan.norm_groups {self.norm_groups} must divide every level width "
                f"{sorted(widths)}"
            )
        if self.quantizer == "gumbel" and self.embed_dim != self.z_channels:
            # taming's GumbelVQ builds its logit conv for z_channels inputs but feeds it the
            # embed_dim-wide output of quant_conv: the released models have both equal
            raise ConfigError("vqgan: the gumbel quantizer needs embed_dim == z_channels")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError("vqgan.dropout must be in [0, 1)")
        weights = (
            self.l1_weight,
            self.perceptual_weight,
            self.commitment,
            self.gumbel_kl_weight,
            self.adversarial_weight,
        )
        if any(w < 0 for w in weights) or self.adversarial_start < 0:
            raise ConfigError("vqgan: loss weights and adversarial_start must be >= 0")
        if self.gumbel_temperature <= 0:
            raise ConfigError("vqgan.gumbel_temperature must be > 0")
        if self.disc_layers < 1 or self.disc_channels < 1:
            raise ConfigError("vqgan: disc_layers and disc_channels must be >= 1")


# -- presets ---------------------------------------------------------------------------------


@register_preset("vqgan", "tiny")
def _tiny() -> VQGANConfig:
    # 32 px -> 8 x 8 tokens of 64 codes (the dalle tiny preset's grid and image vocabulary)
    return VQGANConfig(
        image_size=32,
        ch=16,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(),
        z_channels=16,
        embed_dim=16,
        vocab_size=64,
        norm_groups=8,
        quantizer="nearest",
    )


@register_preset("vqgan", "shapes")
def _shapes() -> VQGANConfig:
    # 32 px -> 8 x 8 tokens of 1024 codes (the shapes DALL·E preset's grid and vocabulary)
    return VQGANConfig(
        image_size=32,
        ch=64,
        ch_mult=(1, 2, 2),
        num_res_blocks=1,
        attn_resolutions=(8,),
        z_channels=64,
        embed_dim=64,
        vocab_size=1024,
        quantizer="nearest",
    )


@register_preset("vqgan", "rudalle")
def _rudalle() -> VQGANConfig:
    # Sber's ``vqgan.gumbelf8-sber`` (ruDALL-E): 256 px -> 32 x 32 of 8192, Gumbel quantizer;
    # trained with taming's losses on a GPU (the adversarial term on, as in taming's recipe)
    return VQGANConfig(adversarial_weight=0.8, adversarial_start=250_001)


@register_preset("train.vqgan", "tiny")
def _train_tiny() -> TrainConfig:
    return TrainConfig(
        steps=30,
        batch_size=8,
        lr=2e-3,
        lr_end=2e-4,
        lr_schedule="cosine",
        betas=(0.5, 0.9),
        weight_decay=0.0,
        grad_clip=0.0,
        ema_decay=0.0,
        checkpoint_every=15,
        sample_every=15,
    )


@register_preset("train.vqgan", "shapes")
def _train_shapes() -> TrainConfig:
    return TrainConfig(
        steps=8000,
        batch_size=8,
        lr=1e-3,
        lr_end=1e-5,
        lr_schedule="cosine",
        betas=(0.5, 0.9),
        weight_decay=0.0,
        grad_clip=0.0,
        ema_decay=0.0,
        checkpoint_every=2000,
        sample_every=2000,
    )


@register_preset("train.vqgan", "rudalle")
def _train_rudalle() -> TrainConfig:
    # taming's recipe: Adam (0.5, 0.9), base lr 4.5e-6 x batch (ruDALL-E's config), bf16
    return TrainConfig(
        steps=1_000_000,
        batch_size=8,
        lr=3.6e-5,
        lr_schedule="constant",
        betas=(0.5, 0.9),
        weight_decay=0.0,
        grad_clip=0.0,
        ema_decay=0.0,
        precision="bf16",
        checkpoint_every=5000,
        sample_every=5000,
    )

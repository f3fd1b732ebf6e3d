"""Config of the discrete VAE (stage 1): architecture and the relaxed-ELB schedules."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from tessera.config.base import Config, register_preset
from tessera.config.training import TrainConfig
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
    straight_through: the decoder reads hard one-hot samples in the forward pass, gradients
      flow through the relaxed softmax (paper: False, relaxed in both passes). Argmax decoding
      then sees codes of the kind the decoder was trained on.
    kl_target: ``posterior`` (paper): beta * KL(q(z|x) || uniform) summed over positions;
      ``marginal``: beta * positions * KL(batch-average q || uniform), which keeps the whole
      codebook in use without flattening each position's posterior.
    post_gain_power: every residual branch is scaled by ``n_layers ** -post_gain_power``
      (paper and ``dall-e``: 2, i.e. 1/16 at 4 groups of 1 block); 0 keeps branches at unit
      gain, so a small decoder shapes edges inside a token from the first updates.
    quantizer: ``gumbel`` (the paper's dVAE: logits over the codebook, gumbel-softmax
      relaxation, KL to the uniform prior) or ``vq`` (beyond the paper: the encoder emits a
      ``codebook_dim`` vector per position, snapped to the nearest of ``vocab_size`` codebook
      vectors, straight-through gradient, ``commitment`` * ||z_e - sg(z_q)||^2; the codebook
      is an EMA of its assigned vectors (decay ``codebook_decay``), and a code whose EMA use
      falls below ``restart_threshold`` assignments per update is re-seeded from a random
      encoder output of the batch, so the book never dies). Tokens, the decoder and every
      consumer are the same; the ``vq`` fields are unused with ``gumbel``.

    Beyond the paper (issue 27, zero-shot composition): a factorised ("gain-shape") tokenizer.
    colour_codes: 0 (paper): one token per grid position. > 0: each grid cell's darkness
      ``1 - pixel`` is split into a colour (gain) vector per cell and a one-channel coverage
      (shape) map, ``1 - pixel = coverage * colour`` (:mod:`tessera.vae.gain_shape`; exact
      for flat-coloured objects on white, like ``shapes``). The coverage map is tokenized by
      this config's network and ``vocab_size`` book as a one-channel image (structure
      tokens); the colours by their own EMA book of ``colour_codes`` vectors (colour tokens,
      ids offset by ``vocab_size``). ``encode`` gives ``(B, h, 2w)`` tokens, each cell's
      structure then colour token, so a colour-shape pair never seen in training is a new
      combination of seen codes rather than codes never emitted. Colour codes that decode
      to one 8-bit colour are one token (the lowest id, found in float64:
      :meth:`tessera.vae.model.DiscreteVAE.colour_ids`). Requires ``vq``.
    colour_window: cells on each side searched for a colour's full strength: a cell that an
      object only grazes takes the colour's hue from its own pixels and its strength from the
      darkest pixel of that hue within the window (1: 3x3 cells).
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
    straight_through: bool = False
    kl_target: Literal["posterior", "marginal"] = "posterior"
    post_gain_power: float = 2.0
    quantizer: Literal["gumbel", "vq"] = "gumbel"
    codebook_dim: int = 64
    commitment: float = 0.25
    codebook_decay: float = 0.99
    restart_threshold: float = 0.05
    colour_codes: int = 0
    colour_window: int = 1

    @property
    def factor_vocabs(self) -> tuple[int, ...]:
        """Code books of a factorised tokenizer's tokens per position (structure, colour);
        ``()`` for the paper's one token per position."""
        return (self.vocab_size, self.colour_codes) if self.colour_codes else ()

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
        if self.codebook_dim < 1 or self.commitment < 0 or not 0.0 < self.codebook_decay < 1.0:
            raise ConfigError(
                "vae: codebook_dim must be >= 1, commitment >= 0, codebook_decay in (0, 1)"
            )
        if self.restart_threshold < 0:
            raise ConfigError("vae.restart_threshold must be >= 0")
        if self.colour_codes < 0 or self.colour_window < 0:
            raise ConfigError("vae: colour_codes and colour_window must be >= 0")
        if self.colour_codes and (self.quantizer != "vq" or self.input_channels != 3):
            raise ConfigError("vae.colour_codes (a factorised tokenizer) needs quantizer vq on RGB")
        if self.kl_weight < 0 or self.kl_start < 0 or self.temp_steps < 0 or self.kl_steps < 0:
            raise ConfigError("vae: kl_weight, kl_start, temp_steps and kl_steps must be >= 0")


# -- presets: the model config ("vae") and its training recipe ("train.vae") ----------------


@register_preset("vae", "tiny")
def _tiny() -> VAEConfig:
    return VAEConfig(
        image_size=32,
        n_hid=16,
        n_blk_per_group=1,
        group_count=3,
        vocab_size=64,
        n_init=16,
        temp_steps=40,
        kl_steps=10,
    )


@register_preset("vae", "shapes")
def _shapes() -> VAEConfig:
    # 32 px -> 8x8 tokens of 4x4 px from a 1024-code vq book (beyond the paper; the paper's
    # recipe is the ``dalle`` preset). Measured with benchmarks/eval_vae_shapes.py (1000 eval
    # images; the bar is >= 30 dB and >= 98% of reconstructions passing the checker):
    # - the paper's gumbel-softmax dVAE at 64 px, 8x8 tokens of 8x8 px (previous preset,
    #   beta 66 -> 3): 25.96 dB, 50.3%. With beta ~0 the encoder saturates onto a few codes
    #   within ~100 updates; with beta high the posterior stays flat and argmax codes (what
    #   the transformer sees) are noisy: train NLL -7.5 bits/dim but 20 dB argmax PSNR.
    #   Straight-through samples or a KL on the batch-average code use (both options of
    #   VAEConfig) collapsed onto 12-50 codes in 1000-update pilots.
    # - 16x16 tokens at 64 px would tokenize well but make the transformer's sequence 272
    #   (7x its step time on CPU): out of the 90-minute budget.
    # - vq (nearest of 1024 EMA-updated vectors, dead codes re-seeded) with the paper's
    #   residual post-gain 1/9 stays blocky for thousands of updates (22.5 dB at 3000); with
    #   unit post-gain (post_gain_power 0) edges form inside tokens at once: 25.3 dB at
    #   1000 updates, 29.96 dB and 80.9% at 8000 (n_hid 32, 995 codes in use); n_hid 64 is
    #   ahead at equal updates (26.1 vs 25.7 dB at 2000). Most failures are small (8 px)
    #   circles drawn too full and read as squares.
    # - 32 px: the spec allows any multiple of 8 from 32; the checker passes 100% of 32 px
    #   originals (1000 eval images).
    # - issue 27 (zero-shot colour-shape pairs): the RGB codes tie colour to local geometry
    #   (a token of a blue arc), so a held-out pair needs codes the transformer never emitted
    #   (held-out 27.9% reranked). The preset is now factorised (colour_codes): 512 structure
    #   codes of a one-channel coverage map + 16 colour codes, two tokens per cell; 8000
    #   updates reach 36.1 dB and 99.1% passing (1000 eval images; the RGB 1024-code book at
    #   12000: 36.3 dB, 97.8%). ``shapes-rgb`` keeps the RGB tokenizer. The transformer on
    #   these tokens draws held-out pairs 87.1% of the time reranked (RGB: 27.9%), seen 98.0%,
    #   both at temperature 0.8 (docs/results.md, "Zero-shot composition: the ablation").
    return dataclasses.replace(_shapes_rgb(), vocab_size=512, colour_codes=16)


@register_preset("vae", "shapes-rgb")
def _shapes_rgb() -> VAEConfig:
    # the shapes tokenizer before issue 27: one RGB token of 1024 codes per 4x4 px cell
    return VAEConfig(
        image_size=32,
        n_hid=64,
        n_blk_per_group=1,
        group_count=3,
        vocab_size=1024,
        n_init=64,
        quantizer="vq",
        codebook_dim=64,
        post_gain_power=0.0,
    )


@register_preset("vae", "dalle")
def _dalle() -> VAEConfig:
    # Paper App. A.2: 3M updates, batch 512 (8 per GPU on 64 GPUs), step size cosine
    # 1e-4 -> 1.25e-6 over 1.2M updates, AdamW (0.9, 0.999, 1e-8, decay 1e-4), EMA 0.999.
    return VAEConfig()


@register_preset("train.vae", "tiny")
def _train_tiny() -> TrainConfig:
    return TrainConfig(
        steps=40,
        batch_size=8,
        lr=2e-3,
        lr_end=2e-4,
        lr_schedule="cosine",
        betas=(0.9, 0.999),
        weight_decay=1e-4,
        grad_clip=0.0,
        ema_decay=0.99,
        checkpoint_every=20,
        sample_every=20,
    )


@register_preset("train.vae", "shapes")
def _train_shapes() -> TrainConfig:
    # the factorised tokenizer: 8000 updates (36.0 dB held-out at 7000 and 8000)
    return dataclasses.replace(_train_shapes_rgb(), steps=8000)


@register_preset("train.vae", "shapes-rgb")
def _train_shapes_rgb() -> TrainConfig:
    # 12000 updates of 8 (paper: batch 512; per image of compute 8 reached higher PSNR),
    # lr 1e-3 -> 1e-5 cosine with the decoder at 3x, fp32 (bf16 convolutions of these narrow
    # layers are slower on CPU), no weight EMA (it would also average the vq codebook,
    # whose dead codes are re-seeded abruptly).
    return TrainConfig(
        steps=12000,
        batch_size=8,
        lr=1e-3,
        lr_end=1e-5,
        lr_schedule="cosine",
        lr_mult=("decoder.=3",),
        betas=(0.9, 0.999),
        weight_decay=1e-4,
        grad_clip=0.0,
        ema_decay=0.0,
        checkpoint_every=2000,
        sample_every=2000,
    )


@register_preset("train.vae", "dalle")
def _train_dalle() -> TrainConfig:
    return TrainConfig(
        steps=3_000_000,
        batch_size=8,
        lr=1e-4,
        lr_end=1.25e-6,
        lr_schedule="cosine",
        lr_decay_steps=1_200_000,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-4,
        grad_clip=0.0,
        ema_decay=0.999,
        checkpoint_every=5000,
        sample_every=5000,
        precision="bf16",
    )

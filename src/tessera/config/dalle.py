"""Config of DALL·E's stage-2 transformer (paper §2.2, App. B.1)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from tessera.config.base import Config, register_preset
from tessera.config.training import TrainConfig
from tessera.errors import ConfigError


@dataclasses.dataclass(frozen=True, kw_only=True)
class DalleConfig(Config):
    """The decoder-only transformer over ``[text_len text; grid_h*grid_w image]`` tokens.

    text_vocab: BPE vocabulary (paper 16384). The text embedding/output table has
      ``text_vocab + text_len`` rows: the last ``text_len`` are the per-position padding
      tokens (paper §2.2: "a special padding token unique to each of the 256 text positions").
    text_len: text positions (paper 256), the first holding ``<bos>``: a caption keeps at most
      ``text_len - 1`` BPE tokens.
    image_vocab / grid_size: dVAE codebook (paper 8192) and token grid side (paper 32).
    d_model / n_layers / n_heads: width, depth and heads (paper 3968 / 64 / 62, 64 per head).
    mlp_ratio: MLP hidden width over ``d_model`` (4).
    attention: ``sparse`` (the paper's schedule: row/column, conv last) or one kind for every
      layer (``full``, ``row``, ``column``, ``conv``; for ablations and benchmarks).
    conv_kernel: window of the convolutional mask (paper 11).
    loss_text_weight / loss_image_weight: cross-entropy weights (paper 1/8, 7/8).
    caption_dropout: probability of training on the empty caption (classifier-free guidance;
      0 in the paper).
    dropout: residual/attention dropout (0 in the presets).
    bos_id: the ``<bos>`` token at text position 0.

    Departures of released models from the paper (the paper's choice is each default; the
    ``rudalle-malevich`` preset sets all of them, see docs/rudalle.md):
    eos_id: a token written right after the caption (ruDALL-E: ``[bos] caption [eos] pad...``
      cut to ``text_len``); None (paper): the padding tokens follow the caption directly.
    norm_placement: ``pre`` (paper: ``x + f(LN(x))``) or ``sandwich`` (CogView's, ruDALL-E's:
      ``x + LN'(f(LN(x)))``, one more LayerNorm on each branch output).
    mask_schedule: ``paper`` or ``rudalle`` (:func:`tessera.nn.masks.layer_kinds`).
    output_head: ``tied`` (paper: logits are the hidden state times the input embedding tables)
      or ``separate`` (ruDALL-E: LayerNorm, then one linear layer with bias over the
      ``text_table + image_vocab`` concatenated vocabulary, untied from the embeddings).

    Beyond the paper (issue 27, zero-shot composition):
    image_factors: ``()`` (paper): one token per grid position over ``image_vocab`` codes. A
      tuple of codebook sizes (summing to ``image_vocab``), e.g. ``(512, 16)``: the image
      tokenizer is factorised (:attr:`tessera.config.vae.VAEConfig.colour_codes`) and every
      grid position carries one token per factor, interleaved in that order (structure, then
      colour), so the image stream is ``grid_size**2 * len(image_factors)`` tokens. Factor
      ``f``'s ids are offset by the sizes before it; each token is predicted among its own
      factor's ids only, the masks' patterns act on grid cells, and a learned factor embedding
      is added to the row and column embeddings.
    """

    kind: ClassVar[str] = "dalle"

    text_vocab: int = 16384
    text_len: int = 256
    image_vocab: int = 8192
    grid_size: int = 32
    d_model: int = 3968
    n_layers: int = 64
    n_heads: int = 62
    mlp_ratio: int = 4
    attention: Literal["sparse", "full", "row", "column", "conv"] = "sparse"
    conv_kernel: int = 11
    loss_text_weight: float = 0.125
    loss_image_weight: float = 0.875
    caption_dropout: float = 0.0
    dropout: float = 0.0
    bos_id: int = 1
    eos_id: int | None = None
    norm_placement: Literal["pre", "sandwich"] = "pre"
    mask_schedule: Literal["paper", "rudalle"] = "paper"
    output_head: Literal["tied", "separate"] = "tied"
    image_factors: tuple[int, ...] = ()

    @property
    def factors(self) -> int:
        """Image tokens per grid position (1 unless the image tokenizer is factorised)."""
        return max(1, len(self.image_factors))

    @property
    def image_len(self) -> int:
        return self.grid_size * self.grid_size * self.factors

    @property
    def seq_len(self) -> int:
        """Positions of the training stream (the last image token is never an input)."""
        return self.text_len + self.image_len

    @property
    def text_table(self) -> int:
        """Rows of the text embedding/output table: BPE ids + one padding token per position."""
        return self.text_vocab + self.text_len

    def validate(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"dalle.d_model {self.d_model} is not divisible by n_heads {self.n_heads}"
            )
        for name in ("text_vocab", "text_len", "image_vocab", "grid_size", "n_layers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"dalle.{name} must be >= 1, got {getattr(self, name)}")
        if self.text_len < 2:
            raise ConfigError("dalle.text_len must be >= 2 (<bos> + at least one token)")
        if not 0 <= self.bos_id < self.text_vocab:
            raise ConfigError(f"dalle.bos_id {self.bos_id} is outside the text vocabulary")
        if self.eos_id is not None and not 0 <= self.eos_id < self.text_vocab:
            raise ConfigError(f"dalle.eos_id {self.eos_id} is outside the text vocabulary")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ConfigError(f"dalle.conv_kernel must be odd and >= 1, got {self.conv_kernel}")
        if not 0.0 <= self.caption_dropout < 1.0 or not 0.0 <= self.dropout < 1.0:
            raise ConfigError("dalle.caption_dropout and dalle.dropout must be in [0, 1)")
        if self.loss_text_weight < 0 or self.loss_image_weight < 0:
            raise ConfigError("dalle loss weights must be >= 0")
        if self.image_factors and (
            len(self.image_factors) < 2
            or min(self.image_factors) < 1
            or sum(self.image_factors) != self.image_vocab
        ):
            raise ConfigError(
                f"dalle.image_factors {list(self.image_factors)} must be two or more codebook "
                f"sizes summing to image_vocab {self.image_vocab} (or empty)"
            )


@register_preset("dalle", "tiny")
def _tiny() -> DalleConfig:
    return DalleConfig(
        text_vocab=300, text_len=8, image_vocab=64, grid_size=8, d_model=32, n_layers=3, n_heads=4
    )


@register_preset("dalle", "shapes")
def _shapes() -> DalleConfig:
    # shapes tokenizer (<= 512 tokens; captions are <= 13 tokens) + the factorised shapes
    # tokenizer (8x8 cells, each a structure token of 512 codes then a colour token of 16:
    # 128 image tokens; issue 27, see docs/results.md's ablation table).
    return dataclasses.replace(_shapes_rgb(), image_vocab=528, image_factors=(512, 16))


@register_preset("dalle", "shapes-rgb")
def _shapes_rgb() -> DalleConfig:
    # the shapes model before issue 27: the RGB tokenizer's 8x8 tokens of 1024 codes
    return DalleConfig(
        text_vocab=512,
        text_len=16,
        image_vocab=1024,
        grid_size=8,
        d_model=192,
        n_layers=8,
        n_heads=6,
        conv_kernel=5,
        caption_dropout=0.1,
    )


@register_preset("dalle", "dalle-12b")
def _dalle_12b() -> DalleConfig:
    return DalleConfig()


@register_preset("dalle", "rudalle-malevich")
def _rudalle_malevich() -> DalleConfig:
    # Sber's ruDALL-E Malevich (v3 weights, 1.3B): 128 text positions over a 16384-token
    # YouTokenToMe BPE (pad 0, unk 1, bos 2, eos 3), 32 x 32 tokens of its 8192-code Gumbel
    # VQGAN, 24 layers of 2048 with 16 heads, CogView's sandwich norm, an untied output layer.
    return DalleConfig(
        text_vocab=16384,
        text_len=128,
        image_vocab=8192,
        grid_size=32,
        d_model=2048,
        n_layers=24,
        n_heads=16,
        bos_id=2,
        eos_id=3,
        norm_placement="sandwich",
        mask_schedule="rudalle",
        output_head="separate",
    )


# -- training recipes ("train.dalle"), one per model preset ------------------------------


@register_preset("train.dalle", "tiny")
def _train_tiny() -> TrainConfig:
    return TrainConfig(
        steps=20,
        batch_size=4,
        lr=1e-3,
        lr_schedule="warmup_cosine",
        warmup_steps=2,
        weight_decay=0.0,
        checkpoint_every=10,
    )


@register_preset("train.dalle", "shapes")
def _train_shapes() -> TrainConfig:
    # bf16 autocast (AMX matmuls); 4000 updates of 32 examples (d 192 x 8 layers: 3.7M
    # parameters, a few MB as shipped in fp16).
    return TrainConfig(
        steps=4000,
        batch_size=32,
        lr=1e-3,
        lr_end=1e-5,
        lr_schedule="warmup_cosine",
        warmup_steps=200,
        betas=(0.9, 0.96),
        weight_decay=4.5e-2,
        grad_clip=4.0,
        ema_decay=0.99,
        ema_every=1,
        precision="bf16",
        checkpoint_every=500,
        sample_every=500,
    )


register_preset("train.dalle", "shapes-rgb")(_train_shapes)


@register_preset("train.dalle", "dalle-12b")
def _train_dalle_12b() -> TrainConfig:
    # App. B.2: batch 1024, warm-up to 4.5e-4 over 5k updates, halved 5 times; AdamW
    # (0.9, 0.96, decay 4.5e-2), clip 4, EMA 0.99 every 25; fp16 with per-resblock scales.
    return TrainConfig(
        steps=430_000,
        batch_size=1,
        lr=4.5e-4,
        lr_schedule="halvings",
        warmup_steps=5000,
        lr_milestones=(210_000, 265_000, 310_000, 370_000, 400_000),
        betas=(0.9, 0.96),
        weight_decay=4.5e-2,
        grad_clip=4.0,
        ema_decay=0.99,
        ema_every=25,
        precision="fp16",
        per_resblock_scaling=True,
        activation_checkpointing=True,
        checkpoint_every=2000,
    )

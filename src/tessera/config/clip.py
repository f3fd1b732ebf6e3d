"""Config of CLIP, the contrastive text-image model used to rerank samples (Radford et al.
2021, "Learning Transferable Visual Models From Natural Language Supervision")."""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar, Literal

from tessera.config.base import Config, register_preset
from tessera.config.training import TrainConfig
from tessera.errors import ConfigError

# OpenAI CLIP's pixel statistics: images in [0, 1] are normalised with them before the ViT.
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CLIPConfig(Config):
    """A ViT image encoder and a causal text transformer mapping into one embedding space.

    embed_dim: width of the joint (L2-normalised) embedding space (ViT-B/32: 512).
    image_size / patch_size: square input side and ViT patch side, in pixels (224 / 32).
    vision_width / vision_layers / vision_heads: the ViT (768 / 12 / 12).
    vocab_size: text token ids, ``[0, vocab_size)`` (tessera's BPE; OpenAI's is 49408).
    context_length: text positions (77); the tokenizer's ``max_length`` must not exceed it.
    text_width / text_layers / text_heads: the text transformer (512 / 12 / 8).
    mlp_ratio: MLP hidden width over the block width (4).
    activation: ``quick_gelu`` (``x * sigmoid(1.702 x)``, OpenAI's released models) or ``gelu``.
    eos_id: the end-of-text id; the text embedding is read at its first occurrence (tessera's
      tokenizer: 2; OpenAI's BPE: 49407).
    bos_id: the begin-of-text id the tokenizer starts every text with (OpenAI's BPE: 49406);
      None (tessera's tokenizers): no such token. Models that encode an empty caption with
      this CLIP (Karlo's unconditional branch) write ``[bos_id, eos_id]``.
    image_mean / image_std: per-channel normalisation applied to [0, 1] images.
    logit_scale_init: initial log of the softmax temperature's inverse (paper: ln(1 / 0.07)).
    logit_scale_max: the inverse temperature is clamped at this value (paper: 100).
    hard_negatives: training only (beyond the paper): per image, this many captions that
      contradict its canonical caption in one claim join the image->text softmax
      (:mod:`tessera.data.shapes.negatives`; examples without a canonical caption get none).
      0 (paper): none.
    """

    kind: ClassVar[str] = "clip"

    embed_dim: int = 512
    image_size: int = 224
    patch_size: int = 32
    vision_width: int = 768
    vision_layers: int = 12
    vision_heads: int = 12
    vocab_size: int = 16384
    context_length: int = 77
    text_width: int = 512
    text_layers: int = 12
    text_heads: int = 8
    mlp_ratio: int = 4
    activation: Literal["quick_gelu", "gelu"] = "quick_gelu"
    eos_id: int = 2
    bos_id: int | None = None
    image_mean: tuple[float, float, float] = OPENAI_MEAN
    image_std: tuple[float, float, float] = OPENAI_STD
    logit_scale_init: float = math.log(1 / 0.07)
    logit_scale_max: float = 100.0
    hard_negatives: int = 0

    @property
    def grid_size(self) -> int:
        """Patches per side of the image."""
        return self.image_size // self.patch_size

    def validate(self) -> None:
        for name in (
            "embed_dim",
            "image_size",
            "patch_size",
            "vision_layers",
            "vocab_size",
            "context_length",
            "text_layers",
            "mlp_ratio",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"clip.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ConfigError(
                f"clip.image_size {self.image_size} is not divisible by patch_size "
                f"{self.patch_size}"
            )
        for width, heads in (("vision_width", "vision_heads"), ("text_width", "text_heads")):
            w, h = getattr(self, width), getattr(self, heads)
            if h < 1 or w < 1 or w % h:
                raise ConfigError(f"clip.{width} {w} is not divisible by {heads} {h}")
        if not 0 <= self.eos_id < self.vocab_size:
            raise ConfigError(f"clip.eos_id {self.eos_id} is outside the text vocabulary")
        if self.bos_id is not None and not 0 <= self.bos_id < self.vocab_size:
            raise ConfigError(f"clip.bos_id {self.bos_id} is outside the text vocabulary")
        if any(s <= 0 for s in self.image_std):
            raise ConfigError("clip.image_std must be > 0")
        if not self.logit_scale_max > 0:
            raise ConfigError("clip.logit_scale_max must be > 0")
        if self.hard_negatives < 0:
            raise ConfigError(f"clip.hard_negatives must be >= 0, got {self.hard_negatives}")


@register_preset("clip", "tiny")
def _tiny() -> CLIPConfig:
    # the tiny tokenizer (vocab 300, 16 tokens) and the tiny dVAE's 32 px images
    return CLIPConfig(
        embed_dim=16,
        image_size=32,
        patch_size=8,
        vision_width=32,
        vision_layers=2,
        vision_heads=2,
        vocab_size=300,
        context_length=16,
        text_width=32,
        text_layers=2,
        text_heads=2,
    )


@register_preset("clip", "shapes")
def _shapes() -> CLIPConfig:
    # 32 px shapes images (the shapes dVAE's size: CLIP scores what the pipeline draws, not
    # a resized copy) as 8x8 patches of 4 px; the shapes tokenizer (vocab 512, 32 tokens).
    # Hard negatives (beyond the paper, see tessera.data.shapes.negatives): the shipped CLIP
    # trained without them reached 38% zero-shot position and 34% relation accuracy
    # (chance 11% / 25%), so it could not rerank what the transformer got wrong.
    return CLIPConfig(
        embed_dim=128,
        image_size=32,
        patch_size=4,
        vision_width=128,
        vision_layers=4,
        vision_heads=4,
        vocab_size=512,
        context_length=32,
        text_width=128,
        text_layers=3,
        text_heads=4,
        hard_negatives=4,
    )


@register_preset("clip", "vit-b-32")
def _vit_b_32() -> CLIPConfig:
    return CLIPConfig()


# -- training recipes ("train.clip"), one per model preset ------------------------------


@register_preset("train.clip", "tiny")
def _train_tiny() -> TrainConfig:
    return TrainConfig(
        steps=100,
        batch_size=32,
        lr=1e-3,
        lr_schedule="warmup_cosine",
        warmup_steps=5,
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=0.0,
        grad_clip=1.0,
        checkpoint_every=50,
    )


@register_preset("train.clip", "shapes")
def _train_shapes() -> TrainConfig:
    # fp32: bf16 autocast measured no faster at these widths on CPU (1.47-1.71 vs
    # 1.55-1.94 s per update of 128 at 1 thread). 3000 updates of 64 images, each with 4
    # hard negative captions.
    return TrainConfig(
        steps=3000,
        batch_size=64,
        lr=1e-3,
        lr_end=1e-5,
        lr_schedule="warmup_cosine",
        warmup_steps=100,
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=0.1,
        grad_clip=1.0,
        checkpoint_every=500,
        sample_every=500,
    )


@register_preset("train.clip", "vit-b-32")
def _train_vit_b_32() -> TrainConfig:
    # CLIP paper §2.5 / App. F: 32 epochs of 400M pairs at a global batch of 32768 (here
    # 256 per process on 128 processes), AdamW (0.9, 0.98, eps 1e-6, decay 0.2), lr 5e-4
    # with 2000 warm-up updates then cosine to 0, mixed precision.
    return TrainConfig(
        steps=390_625,
        batch_size=256,
        lr=5e-4,
        lr_schedule="warmup_cosine",
        warmup_steps=2000,
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=0.2,
        grad_clip=0.0,
        precision="fp16",
        checkpoint_every=2000,
    )

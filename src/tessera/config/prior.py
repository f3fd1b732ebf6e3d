"""Configs of the unCLIP priors (Ramesh et al. 2022 §2.2): caption (+ CLIP text embedding z_t)
-> CLIP image embedding z_i. ``prior``: the diffusion prior; ``ar_prior``: the autoregressive
prior over PCA-reduced, quantised z_i."""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from tessera.config.base import Config, register_preset
from tessera.config.clip import CLIPConfig
from tessera.config.diffusion import DiffusionConfig
from tessera.config.training import TrainConfig
from tessera.errors import ConfigError


def _prior_diffusion() -> DiffusionConfig:
    # The paper's prior: cosine, 1000 steps, x0 prediction (MSE on the unnoised z_i). The
    # prior works in the sqrt(D)-scaled space (entries of unit variance, |x0| <= sqrt(D)):
    # the predicted x0 is clamped at +-10 while sampling as karlo does.
    return DiffusionConfig(schedule="cosine", prediction="x0", variance="fixed_small", clip_x0=10.0)


def _check_common(cfg: Config, name: str) -> None:
    for field in ("clip_dim", "vocab_size", "text_length", "width", "layers", "heads"):
        if getattr(cfg, field) < 1:
            raise ConfigError(f"{name}.{field} must be >= 1, got {getattr(cfg, field)}")
    if cfg.width % cfg.heads:  # type: ignore[attr-defined]
        raise ConfigError(
            f"{name}.width {cfg.width} is not divisible by heads {cfg.heads}"  # type: ignore[attr-defined]
        )
    if not 0.0 <= cfg.cond_dropout < 1.0:  # type: ignore[attr-defined]
        raise ConfigError(f"{name}.cond_dropout must be in [0, 1), got {cfg.cond_dropout}")  # type: ignore[attr-defined]


@dataclasses.dataclass(frozen=True, kw_only=True)
class PriorConfig(Config):
    """The diffusion prior: a decoder-only transformer over [caption tokens, z_t, timestep,
    noised z_i, query] that predicts the unnoised z_i from the query's output.

    clip_dim: D, the CLIP embedding width (ViT-H/16: 1024).
    vocab_size / text_length: caption ids in ``[0, vocab_size)``, up to ``text_length`` of
      them (``<pad>`` = 0 becomes a learned embedding per position, as in GLIDE).
    width / layers / heads: the transformer (paper: 2048 wide, 24 blocks).
    cond_dropout: training probability of dropping the caption *and* z_t together (z_t
      becomes a learned null embedding, the caption all padding): paper 10%.
    diffusion: the process (paper: cosine, 1000 steps, x0 prediction).
    text_encoder: ``tokens`` (tessera's paper prior): the caption's own learned token
      embeddings; ``clip`` (Karlo): the final hidden states of the frozen CLIP text encoder
      ``clip_text`` (the prior owns a copy of its text tower), projected, padding masked, and
      z_t as that encoder makes it; the sequence has one learned position table. A dropped
      condition is CLIP's encoding of the empty text (no learned null).
    clip_text: the CLIP whose text tower ``text_encoder="clip"`` reads (``embed_dim`` =
      ``clip_dim``, ``context_length`` = ``text_length``).
    embedding_space: where the diffusion runs: ``sqrt_dim`` (tessera): z_i L2-normalised x
      sqrt(D), samples returned at unit norm; ``standardized`` (Karlo): z_i standardised with
      the per-dimension CLIP statistics stored with the weights (``clip_mean``, ``clip_std``),
      samples returned as CLIP's unnormalised embeddings (x * std + mean).
    """

    kind: ClassVar[str] = "prior"

    clip_dim: int = 1024
    vocab_size: int = 16384
    text_length: int = 128
    width: int = 2048
    layers: int = 24
    heads: int = 32
    cond_dropout: float = 0.1
    diffusion: DiffusionConfig = dataclasses.field(default_factory=_prior_diffusion)
    text_encoder: Literal["tokens", "clip"] = "tokens"
    clip_text: CLIPConfig | None = None
    embedding_space: Literal["sqrt_dim", "standardized"] = "sqrt_dim"

    def validate(self) -> None:
        _check_common(self, "prior")
        if self.text_encoder == "clip":
            ct = self.clip_text
            if ct is None:
                raise ConfigError("prior.text_encoder 'clip' needs prior.clip_text")
            if ct.embed_dim != self.clip_dim or ct.context_length != self.text_length:
                raise ConfigError(
                    f"prior.clip_text makes {ct.embed_dim}-d embeddings over "
                    f"{ct.context_length} tokens; the prior has clip_dim {self.clip_dim} and "
                    f"text_length {self.text_length}"
                )
        if self.diffusion.prediction != "x0" or self.diffusion.variance == "learned_range":
            raise ConfigError(
                "prior.diffusion must predict x0 with a fixed variance (the paper's prior: "
                "MSE on the unnoised z_i)"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ARPriorConfig(Config):
    """The autoregressive prior: z_i reduced by PCA to at most ``max_components`` components
    (the fewest that keep the relative squared reconstruction error below ``pca_error``),
    each quantised into ``buckets`` quantile bins; a causal transformer predicts the
    component tokens in eigenvalue order after the prefix [caption tokens, z_t, quantised
    z_i . z_t].

    max_components: the sequence's capacity (paper: 319 of 1024 at < 1% error); the count
      actually kept is fitted at the start of training and stored with the weights.
    pca_error: the reconstruction budget: sum over samples of ||z - recon(z)||^2 divided by
      sum of ||z - mean||^2 (the share of variance lost) on the fit set, < this.
    pca_images: training images the PCA, the bucket edges and the dot-product buckets are
      fitted on (once, deterministically, at the start of training).
    buckets: quantile bins per component (paper: 1024).
    dot_buckets: quantile bins of z_i . z_t (the prepended token).
    """

    kind: ClassVar[str] = "ar_prior"

    clip_dim: int = 1024
    vocab_size: int = 16384
    text_length: int = 128
    width: int = 2048
    layers: int = 18
    heads: int = 32
    cond_dropout: float = 0.1
    max_components: int = 319
    pca_error: float = 0.01
    pca_images: int = 65536
    buckets: int = 1024
    dot_buckets: int = 64

    def validate(self) -> None:
        _check_common(self, "ar_prior")
        if not 1 <= self.max_components <= self.clip_dim:
            raise ConfigError(
                f"ar_prior.max_components must be in [1, clip_dim={self.clip_dim}], "
                f"got {self.max_components}"
            )
        if not 0.0 < self.pca_error < 1.0:
            raise ConfigError(f"ar_prior.pca_error must be in (0, 1), got {self.pca_error}")
        if self.buckets < 2 or self.dot_buckets < 2:
            raise ConfigError("ar_prior.buckets and dot_buckets must be >= 2")
        if self.pca_images < max(self.buckets, self.max_components + 1):
            raise ConfigError(
                f"ar_prior.pca_images ({self.pca_images}) must be >= buckets and > max_components"
            )


# -- model presets -------------------------------------------------------------------------


@register_preset("prior", "tiny")
def _tiny() -> PriorConfig:
    # the tiny CLIP (embed 16) and tokenizer (vocab 300, 16 tokens)
    return PriorConfig(clip_dim=16, vocab_size=300, text_length=16, width=32, layers=2, heads=2)


@register_preset("prior", "shapes")
def _shapes() -> PriorConfig:
    # the shapes CLIP (embed 128) and tokenizer (vocab 512, 32 tokens); width 192 and 4
    # blocks (1.8M parameters): ~0.25 s per bf16 update of 64 on one thread, plus ~0.25 s to
    # embed the batch with the CLIP (measured; width 256 took twice as long)
    return PriorConfig(clip_dim=128, vocab_size=512, text_length=32, width=192, layers=4, heads=4)


@register_preset("prior", "unclip")
def _paper() -> PriorConfig:
    # §2.2 / Table 3: width 2048, 24 blocks, ViT-H/16 embeddings (1024), GLIDE's 128 tokens
    return PriorConfig(clip_dim=1024, vocab_size=50257, text_length=128, width=2048, layers=24)


@register_preset("ar_prior", "tiny")
def _ar_tiny() -> ARPriorConfig:
    return ARPriorConfig(
        clip_dim=16,
        vocab_size=300,
        text_length=16,
        width=32,
        layers=2,
        heads=2,
        max_components=16,
        pca_images=256,
        buckets=32,
        dot_buckets=8,
    )


@register_preset("ar_prior", "shapes")
def _ar_shapes() -> ARPriorConfig:
    # 256 quantile bins (not 1024): the fit set is 8192 images, 32 per bin
    return ARPriorConfig(
        clip_dim=128,
        vocab_size=512,
        text_length=32,
        width=192,
        layers=4,
        heads=4,
        max_components=128,
        pca_images=8192,
        buckets=256,
        dot_buckets=64,
    )


@register_preset("ar_prior", "unclip")
def _ar_paper() -> ARPriorConfig:
    # §2.2: 319 components of ViT-H/16's 1024, 1024 buckets; Table 3: 1B parameters (width
    # 2048 and 18 blocks: the paper gives no shape for it)
    return ARPriorConfig(
        clip_dim=1024,
        vocab_size=50257,
        text_length=128,
        width=2048,
        layers=18,
        heads=32,
        max_components=319,
        buckets=1024,
    )


# -- training recipes ("train.prior", "train.ar_prior") ----------------------------------------


def _train_tiny() -> TrainConfig:
    return TrainConfig(
        steps=40,
        batch_size=16,
        lr=1e-3,
        warmup_steps=5,
        betas=(0.9, 0.999),
        weight_decay=0.0,
        grad_clip=1.0,
        ema_decay=0.9,
        checkpoint_every=20,
    )


register_preset("train.prior", "tiny")(_train_tiny)
register_preset("train.ar_prior", "tiny")(_train_tiny)


@register_preset("train.prior", "shapes")
def _train_shapes() -> TrainConfig:
    # a short CPU run: lr 3e-4 (paper 1.1e-4 at batch 4096), EMA 0.999 (paper 0.9999);
    # Adam beta2 0.96 and weight decay 6e-2 as Table 3
    return TrainConfig(
        steps=2000,
        batch_size=64,
        lr=3e-4,
        lr_end=1e-5,
        lr_schedule="warmup_cosine",
        warmup_steps=100,
        betas=(0.9, 0.96),
        eps=1e-6,
        weight_decay=6e-2,
        grad_clip=1.0,
        ema_decay=0.999,
        precision="bf16",
        checkpoint_every=250,
        sample_every=1000,
    )


@register_preset("train.ar_prior", "shapes")
def _train_ar_shapes() -> TrainConfig:
    # Table 3's AR prior: Adam beta2 0.91, weight decay 4e-2; lr 3e-4 for a short run
    return TrainConfig(
        steps=2000,
        batch_size=64,
        lr=3e-4,
        lr_end=1e-5,
        lr_schedule="warmup_cosine",
        warmup_steps=100,
        betas=(0.9, 0.91),
        eps=1e-8,
        weight_decay=4e-2,
        grad_clip=1.0,
        ema_decay=0.999,
        precision="bf16",
        checkpoint_every=250,
        sample_every=1000,
    )


@register_preset("train.prior", "unclip")
def _train_paper() -> TrainConfig:
    # Table 3: batch 4096 (64 per process on 64 processes), 600K iterations, lr 1.1e-4,
    # weight decay 6e-2, Adam beta2 0.96 / eps 1e-6, EMA 0.9999
    return TrainConfig(
        steps=600_000,
        batch_size=64,
        lr=1.1e-4,
        lr_schedule="constant",
        betas=(0.9, 0.96),
        eps=1e-6,
        weight_decay=6e-2,
        grad_clip=1.0,
        ema_decay=0.9999,
        precision="bf16",
        checkpoint_every=2000,
    )


@register_preset("train.ar_prior", "unclip")
def _train_ar_paper() -> TrainConfig:
    # Table 3: batch 4096, 1M iterations, lr 1.6e-4, weight decay 4e-2, Adam beta2 0.91 /
    # eps 1e-10, EMA 0.999
    return TrainConfig(
        steps=1_000_000,
        batch_size=64,
        lr=1.6e-4,
        lr_schedule="constant",
        betas=(0.9, 0.91),
        eps=1e-10,
        weight_decay=4e-2,
        grad_clip=1.0,
        ema_decay=0.999,
        precision="bf16",
        checkpoint_every=2000,
    )

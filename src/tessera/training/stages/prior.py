"""The unCLIP priors as trainable stages (``prior``: diffusion, ``ar_prior``: autoregressive):
images -> (CLIP image embedding z_i, caption ids, CLIP text embedding z_t) -> the prior's loss.

Each image is embedded by a frozen CLIP (``--clip``, by default the shipped shapes CLIP) at
the CLIP's own resolution; one of its captions is BPE-encoded with dropout (as CLIP's are)
and embedded by the same CLIP as z_t. The noise level, the noise and the guidance drops of a
batch come from its own seed (run seed, rank, batch index), each example's caption and its
dropout from the example's own generator (:class:`~tessera.training.data.DrawnBatches`), so
a resumed run draws the same ones.

The AR prior's PCA and buckets are fitted once, before training starts, on the first
``pca_images`` training images (deterministic, so a resumed run refits the same values,
which the checkpoint then overwrites) by the stage's ``prepare`` hook, which the runner calls
on the fresh model before the trainer copies its weights into the EMA.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.prior import ARPriorConfig, PriorConfig
from tessera.config.training import TrainConfig
from tessera.errors import ConfigError
from tessera.models.prior import ARPrior, DiffusionPrior
from tessera.nn.rng import generator_for
from tessera.sampling.unclip import embed_images
from tessera.training.data import BatchStream, DrawnBatches, pick_caption, source_image_batches
from tessera.training.distributed import DistContext
from tessera.training.stages.base import (
    DataSpec,
    Objective,
    Stage,
    append_eval,
    exporter,
    stage_presets,
)
from tessera.training.stages.decoder import default_components, fit_to_inputs

log = logging.getLogger("tessera.train")

EVAL_CAPTIONS = 256  # fixed eval images whose canonical captions the sample hook scores


def load_frozen(cfg: PriorConfig | ARPriorConfig, data: DataSpec) -> tuple[Any, Any]:
    """The frozen CLIP (eval mode) and tokenizer, checked against the prior config."""
    from tessera.checkpoint import load

    clip_dir, tok_dir = default_components(data)
    clip = load(clip_dir, kind="clip").eval()
    tok = load(tok_dir, kind="tokenizer")
    check_compatible(cfg, clip, tok)
    return clip, tok


def caption_tokenizer(cfg: PriorConfig | ARPriorConfig, data: DataSpec) -> Any:
    """The tokenizer of the prior's captions, saved in its release checkpoint (the AR prior's
    PCA and buckets are buffers in its weights)."""
    return load_frozen(cfg, data)[1]


def check_compatible(cfg: PriorConfig | ARPriorConfig, clip: Any, tok: Any) -> None:
    name = type(cfg).kind
    if clip.config.embed_dim != cfg.clip_dim:
        raise ConfigError(
            f"{name}.clip_dim {cfg.clip_dim} != the CLIP's embed_dim {clip.config.embed_dim}"
        )
    if tok.vocab_size > cfg.vocab_size or tok.max_length > cfg.text_length:
        raise ConfigError(
            f"the tokenizer (vocab {tok.vocab_size}, {tok.max_length} tokens) does not fit "
            f"the {name} (vocab {cfg.vocab_size}, {cfg.text_length} tokens)"
        )
    if tok.max_length > clip.config.context_length:
        raise ConfigError(
            f"the tokenizer makes {tok.max_length} tokens; the CLIP reads "
            f"{clip.config.context_length}"
        )


@torch.no_grad()
def embed_texts(clip: Any, ids: torch.Tensor) -> torch.Tensor:
    """Caption ids (B, L) with ``<eos>`` -> L2-normalised CLIP text embeddings z_t (B, D)."""
    device = next(clip.parameters()).device
    with torch.autocast(device.type, enabled=False):
        return clip.encode_text(ids.to(device)).float()


class PriorBatches(DrawnBatches):
    """``{"text": (B, L) ids, "z_i": (B, D), "z_t": (B, D), "seed": int}``; resumable
    through the wrapped image stream. ``train=False``: no BPE dropout."""

    def __init__(
        self,
        inner: BatchStream,
        clip: Any,
        tokenizer: Any,
        *,
        seed: int,
        rank: int,
        train: bool = True,
    ) -> None:
        super().__init__(inner, seed=seed, rank=rank)
        self.clip, self.tokenizer, self.train = clip, tokenizer, train

    def make(self, batch: dict[str, Any], seed: int) -> dict[str, Any]:
        rngs = self.example_rngs(batch, seed)
        captions = [pick_caption(c, r) for c, r in zip(batch["captions"], rngs, strict=True)]
        seeds = [r.getrandbits(63) for r in rngs]
        ids = self.tokenizer.encode_batch(captions, train=self.train, add_eos=True, seed=seeds).ids
        return {
            "text": ids,
            "z_i": embed_images(self.clip, batch["images"]),
            "z_t": embed_texts(self.clip, ids),
            "seed": seed,
        }


def _image_stream(
    clip: Any, data: DataSpec, batch_size: int, rank: int, world: int, workers: int = 0
) -> BatchStream:
    return source_image_batches(
        data.source,
        image_size=clip.config.image_size,
        batch_size=batch_size,
        seed=data.seed,
        rank=rank,
        world_size=world,
        num_workers=workers,
    )


def make_batches(
    cfg: PriorConfig | ARPriorConfig, train: TrainConfig, data: DataSpec, ctx: DistContext
) -> BatchStream:
    clip, tok = load_frozen(cfg, data)
    inner = _image_stream(clip, data, train.batch_size, ctx.rank, ctx.world_size, train.num_workers)
    return PriorBatches(inner, clip, tok, seed=train.seed, rank=ctx.rank)


# -- the diffusion prior -----------------------------------------------------------------------


def make_objective(cfg: PriorConfig) -> Objective:
    from tessera.diffusion import diffusion_loss, q_sample, schedule_for
    from tessera.models.prior import scale_embedding

    schedule = schedule_for(cfg.diffusion)

    def objective(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        x0 = scale_embedding(batch["z_i"].to(device))  # (B, D), entries of unit mean square
        b = x0.shape[0]
        g = generator_for(device, batch["seed"])
        t = torch.randint(0, schedule.num_steps, (b,), generator=g, device=device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        drop = torch.rand(b, generator=g, device=device) < cfg.cond_dropout
        x_t = q_sample(schedule, x0, t, noise)
        out = model(x_t, t, text=batch["text"].to(device), z_t=batch["z_t"].to(device), drop=drop)
        loss, terms = diffusion_loss(
            out.float(), x0=x0, x_t=x_t, t=t, noise=noise, s=schedule, cfg=cfg.diffusion
        )
        cos = F.cosine_similarity(out.detach().float(), x0, dim=-1).mean()
        metrics = {k: float(v.detach().mean()) for k, v in terms.items()}
        metrics["cos_x0"] = float(cos)
        return loss.mean(), metrics

    return objective


# -- the AR prior ------------------------------------------------------------------------------


@torch.no_grad()
def fit_codebook(model: ARPrior, clip: Any, tok: Any, data: DataSpec) -> dict[str, float]:
    """Fit the AR prior's PCA and buckets on the first ``pca_images`` training images (one
    caption each, no BPE dropout): deterministic for a given data source and seed."""
    cfg = model.config
    stream = _image_stream(clip, data, 256, 0, 1)
    batches = PriorBatches(stream, clip, tok, seed=data.seed, rank=0, train=False)
    z_i, z_t, n = [], [], 0
    while n < cfg.pca_images:
        batch = next(batches)
        z_i.append(batch["z_i"].cpu())
        z_t.append(batch["z_t"].cpu())
        n += batch["z_i"].shape[0]
    info = model.fit(torch.cat(z_i)[: cfg.pca_images], torch.cat(z_t)[: cfg.pca_images])
    log.info(
        "AR prior: %d PCA components keep %.4f relative squared error (budget %.4f, %d images)",
        info["components"],
        info["pca_error"],
        cfg.pca_error,
        cfg.pca_images,
    )
    return info


def prepare_ar(model: nn.Module, cfg: ARPriorConfig, data: DataSpec) -> None:
    """Fit the fresh AR prior's PCA and buckets (the stage's ``prepare`` hook)."""
    if not model.fitted:  # type: ignore[union-attr]
        clip, tok = load_frozen(cfg, data)
        fit_codebook(model, clip, tok, data)  # type: ignore[arg-type]


def make_ar_objective(cfg: ARPriorConfig) -> Objective:
    def objective(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        prior = getattr(model, "module", model)  # DDP
        z_i, z_t = batch["z_i"].to(device), batch["z_t"].to(device)
        b = z_i.shape[0]
        g = generator_for(device, batch["seed"])
        drop = torch.rand(b, generator=g, device=device) < cfg.cond_dropout
        # the targets are quantised in float32: under bf16 autocast the PCA projection moved
        # ~12% of the tokens by one bucket
        with torch.autocast(device.type, enabled=False):
            comps = prior.encode(z_i.float())  # (B, K)
            dot = prior.dot_token(z_i.float(), z_t.float())  # (B,)
        dot_logits, comp_logits = model(
            batch["text"].to(device), z_t, dot, comps[:, :-1], drop=drop
        )
        dot_ce = F.cross_entropy(dot_logits.float(), dot)
        comp_ce = F.cross_entropy(comp_logits.float().flatten(0, 1), comps.flatten())
        k = comps.shape[1]
        loss = (dot_ce + k * comp_ce) / (k + 1)  # mean over the K + 1 predicted tokens
        metrics = {
            "dot_ce": float(dot_ce.detach()),
            "component_ce": float(comp_ce.detach()),
            "components": float(k),
        }
        return loss, metrics

    return objective


# -- both ------------------------------------------------------------------------------------


def eval_batch(clip: Any, tok: Any, n: int = EVAL_CAPTIONS) -> dict[str, Any]:
    """``n`` fixed ``shapes`` eval images (seed 0): canonical captions, their ids, z_t and
    the true z_i."""
    from tessera.training.data import shapes_image_batches

    batch = next(
        shapes_image_batches(
            split="eval",
            image_size=clip.config.image_size,
            batch_size=n,
            seed=0,
            rank=0,
            world_size=1,
        )
    )
    captions = [c[0] if isinstance(c, list | tuple) else c for c in batch["captions"]]
    ids = tok.encode_batch(captions, add_eos=True).ids
    return {
        "captions": captions,
        "text": ids,
        "z_t": embed_texts(clip, ids),
        "z_i": embed_images(clip, batch["images"]),
    }


def make_sample_hook(
    cfg: PriorConfig | ARPriorConfig, data: DataSpec
) -> Callable[[nn.Module, int, Path], None]:
    """Every ``sample_every`` updates: z_i sampled for the canonical captions of 256 fixed
    eval images (diffusion: 25 DDIM steps; both: best of 2, no guidance) and their mean
    cosine to the images' true z_i, appended to ``eval.jsonl``."""
    held: dict[str, Any] = {}

    def hook(model: nn.Module, step: int, out_dir: Path) -> None:
        from tessera.sampling.prior import sample_prior

        if not held:
            clip, tok = load_frozen(cfg, data)
            held.update(eval_batch(clip, tok))
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
        z = sample_prior(model, held["text"], held["z_t"], steps=25, generator=g)
        cos = F.cosine_similarity(z.cpu(), held["z_i"], dim=-1)
        record = {"step": step, "cos_z_i": round(float(cos.mean()), 5), "n": len(cos)}
        append_eval(out_dir, record)

    return hook


STAGE = Stage(
    name="prior",
    fit_inputs=fit_to_inputs,
    model_config_cls=PriorConfig,
    presets=stage_presets("prior"),
    build_model=DiffusionPrior,
    objective=make_objective,
    make_batches=make_batches,
    sample_hook=make_sample_hook,
    export=exporter(caption_tokenizer),
)

AR_STAGE = Stage(
    name="ar_prior",
    fit_inputs=fit_to_inputs,
    model_config_cls=ARPriorConfig,
    presets=stage_presets("ar_prior"),
    build_model=ARPrior,
    objective=make_ar_objective,
    make_batches=make_batches,
    sample_hook=make_sample_hook,
    export=exporter(caption_tokenizer),
    prepare=prepare_ar,
)

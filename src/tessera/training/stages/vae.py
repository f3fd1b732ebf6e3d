"""The dVAE as a trainable stage: presets, the relaxed-ELB objective, data, reports, export."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tessera.config.training import TrainConfig
from tessera.config.vae import VAEConfig
from tessera.data.images import psnr
from tessera.training.data import BatchStream, source_image_batches
from tessera.training.distributed import DistContext
from tessera.training.schedules import cosine
from tessera.training.stages.base import (
    DataSpec,
    Objective,
    Stage,
    append_eval,
    exporter,
    stage_presets,
)
from tessera.vae.losses import (
    codebook_stats,
    kl_marginal_to_uniform,
    kl_to_uniform,
    logit_laplace_nll,
)
from tessera.vae.model import DiscreteVAE
from tessera.vae.pixels import map_pixels


def temperature(cfg: VAEConfig, step: int) -> float:
    """Gumbel-softmax temperature of update ``step``: cosine temp_start -> temp_end."""
    return cosine(step, start=cfg.temp_start, end=cfg.temp_end, steps=cfg.temp_steps)


def kl_weight(cfg: VAEConfig, step: int) -> float:
    """beta of update ``step``: cosine kl_start -> kl_weight over kl_steps, then constant."""
    return cosine(step, start=cfg.kl_start, end=cfg.kl_weight, steps=cfg.kl_steps)


def relaxed_elb_loss(
    images: torch.Tensor,
    logits: torch.Tensor,
    mu: torch.Tensor,
    ln_b: torch.Tensor,
    *,
    beta: float,
    eps: float,
    kl_target: str = "posterior",
) -> tuple[torch.Tensor, dict[str, float]]:
    """-ELB per pixel dimension: logit-Laplace NLL + beta * KL(q || uniform).

    Both terms are in nats per image divided by the number of pixel dimensions (3*H*W), so
    ``beta`` keeps the paper's meaning at any resolution. images: (B, 3, H, W) in [0, 1].
    """
    x = map_pixels(images.float(), eps)
    dims = x[0].numel()
    nll = logit_laplace_nll(x, mu.float(), ln_b.float()).flatten(1).sum(1)  # (B,) nats
    if kl_target == "marginal":  # positions * KL(batch-average code use || uniform)
        positions = logits[0, 0].numel()
        kl = (positions * kl_marginal_to_uniform(logits)).expand(images.shape[0])
    else:
        kl = kl_to_uniform(logits).flatten(1).sum(1)  # (B,) nats
    loss = (nll + beta * kl).mean() / dims
    metrics = {
        "nll_bpd": float(nll.detach().mean()) / dims / 0.6931471805599453,
        "kl_nats": float(kl.detach().mean()),
        "beta": beta,
    }
    return loss, metrics


def vq_loss(
    images: torch.Tensor,
    logits: torch.Tensor,
    mu: torch.Tensor,
    ln_b: torch.Tensor,
    model: nn.Module,
    cfg: VAEConfig,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The ``vq`` quantizer's loss: logit-Laplace NLL per pixel dimension (as the relaxed ELB)
    plus the commitment term the codebook computed in the forward pass."""
    x = map_pixels(images.float(), cfg.logit_laplace_eps)
    dims = x[0].numel()
    nll = logit_laplace_nll(x, mu.float(), ln_b.float()).flatten(1).sum(1)  # (B,) nats
    commit = model.codebook.commit_loss
    loss = nll.mean() / dims + commit
    _, dead = codebook_stats(logits.detach())
    metrics = {
        "nll_bpd": float(nll.detach().mean()) / dims / 0.6931471805599453,
        "commit": float(commit.detach()),
        "codes_alive": float((model.codebook.cluster_size >= cfg.restart_threshold).sum()),
        "dead_codes": float(dead),
    }
    return loss, metrics


def build_model(cfg: VAEConfig) -> DiscreteVAE:
    """A :class:`DiscreteVAE` with the training recipe's one change to ``dall-e``'s init.

    The decoder's input 1x1 convolution reads (relaxed) one-hot codes: its effective fan-in
    is 1, not ``vocab_size``, so its weights start at N(0, 1) (an embedding init) instead of
    ``dall-e``'s N(0, 1/vocab_size). With the latter a code moves the decoder's input by
    ~1/sqrt(K) (0.04 at K=512), the reconstruction gradient reaching the encoder's logits is
    as small, and the codes carry almost no signal for the first hundreds of updates.
    Architecture, parameter count and weight conversion are unchanged.
    """
    model = DiscreteVAE(cfg)
    if cfg.quantizer == "gumbel":  # vq feeds real vectors: dall-e's fan-in init is right
        with torch.no_grad():
            model.decoder.blocks.input.weight.normal_(0.0, 1.0)
    return model


def make_objective(cfg: VAEConfig) -> Objective:
    def objective(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        images = batch["images"]
        tau = temperature(cfg, step)
        if cfg.colour_codes:  # factorised: the network codes the coverage map, the colour
            inner = getattr(model, "module", model)  # book is an EMA of the cells' colours
            cover, colours = inner.split(images.to(next(model.parameters()).device))
            if model.training:
                inner.observe_colours(colours)
            images = cover
        logits, mu, ln_b = model(map_pixels(images.float(), cfg.logit_laplace_eps), tau)
        if cfg.quantizer == "vq":
            return vq_loss(images, logits, mu, ln_b, getattr(model, "module", model), cfg)
        loss, metrics = relaxed_elb_loss(
            images,
            logits,
            mu,
            ln_b,
            beta=kl_weight(cfg, step),
            eps=cfg.logit_laplace_eps,
            kl_target=cfg.kl_target,
        )
        perplexity, dead = codebook_stats(logits.detach())
        metrics.update({"temperature": tau, "perplexity": perplexity, "dead_codes": float(dead)})
        return loss, metrics

    return objective


def make_batches(
    cfg: VAEConfig, train: TrainConfig, data: DataSpec, ctx: DistContext
) -> BatchStream:
    return source_image_batches(
        data.source,
        image_size=cfg.image_size,
        batch_size=train.batch_size,
        seed=data.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        num_workers=train.num_workers,
    )


def heldout_images(cfg: VAEConfig, n: int = 32) -> torch.Tensor:
    """A fixed batch of ``shapes`` eval-split images at the model's size (B, 3, S, S)."""
    from tessera.training.data import shapes_image_batches

    return next(
        shapes_image_batches(
            split="eval", image_size=cfg.image_size, batch_size=n, seed=0, rank=0, world_size=1
        )
    )["images"]


@torch.no_grad()
def reconstruct(model: DiscreteVAE, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens (B, h, w), reconstructions (B, 3, H, W)): argmax encode, median decode."""
    tokens = model.encode(images)
    return tokens, model.decode(tokens)


def make_sample_hook(
    cfg: VAEConfig, data: DataSpec | None = None
) -> Callable[[nn.Module, int, Path], None]:
    """Every ``sample_every`` updates: held-out PSNR, codebook use, a reconstruction grid."""
    held: dict[str, torch.Tensor] = {}

    def hook(model: nn.Module, step: int, out_dir: Path) -> None:
        from tessera.data.images import save_side_by_side

        if "x" not in held:
            held["x"] = heldout_images(cfg)
        x = held["x"].to(next(model.parameters()).device)
        tokens, rec = reconstruct(model, x)
        used = int(torch.unique(tokens).numel())
        record = {"step": step, "heldout_psnr": float(psnr(rec, x).mean()), "codes_used": used}
        append_eval(out_dir, record)
        save_side_by_side(x[:16], rec[:16], out_dir / f"recon-{step:08d}.png")

    return hook


STAGE = Stage(
    name="vae",
    model_config_cls=VAEConfig,
    presets=stage_presets("vae"),
    build_model=build_model,
    objective=make_objective,
    make_batches=make_batches,
    sample_hook=make_sample_hook,
    export=exporter(),
)

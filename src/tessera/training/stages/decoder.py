"""The unCLIP decoder as a trainable stage: images -> (CLIP image embedding, caption) ->
the diffusion loss of the decoder UNet.

Each image is embedded by a frozen CLIP (``--clip``, by default the shipped shapes CLIP) at
the CLIP's own resolution; one of its captions is BPE-encoded with dropout, as CLIP's are.
The noise level, the noise and the guidance drops of a batch come from the batch's own seed
(run seed, rank, batch index), each example's caption and its BPE dropout from the example's
own generator (see :class:`~tessera.training.data.DrawnBatches`): ranks and micro-batches
draw differently and a resumed run draws the same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tessera.config.decoder import DecoderConfig
from tessera.config.training import TrainConfig
from tessera.errors import ConfigError
from tessera.models.decoder import Decoder
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


def default_components(data: DataSpec) -> tuple[str, str]:
    """(CLIP dir, tokenizer dir): the run's, or the shipped shapes pipeline's."""
    from tessera.checkpoint import shipped_dir

    base = shipped_dir("pipeline")
    return (
        data.clip or str(base / "clip"),
        data.tokenizer or str(base / "tokenizer"),
    )


def fit_to_inputs(cfg: Any, data: DataSpec, explicit: set[str]) -> Any:
    """``cfg`` with its interface to the frozen CLIP and tokenizer (``clip_dim``,
    ``vocab_size``, ``text_length``) taken from them, except fields the user set: so a stage's
    preset runs with its default inputs (the shipped CLIP) as with any other CLIP."""
    from tessera.checkpoint import load

    clip_dir, tok_dir = default_components(data)
    clip = load(clip_dir, kind="clip")
    tok = load(tok_dir, kind="tokenizer")
    wanted = {
        "clip_dim": clip.config.embed_dim,
        "vocab_size": max(cfg.vocab_size, tok.vocab_size),
        "text_length": max(cfg.text_length, tok.max_length),
    }
    changes = {k: v for k, v in wanted.items() if k not in explicit and getattr(cfg, k) != v}
    return cfg.replace(**changes) if changes else cfg


def load_frozen(cfg: DecoderConfig, data: DataSpec) -> tuple[Any, Any]:
    """The frozen CLIP (eval mode) and tokenizer, checked against the decoder config."""
    from tessera.checkpoint import load

    clip_dir, tok_dir = default_components(data)
    clip = load(clip_dir, kind="clip").eval()
    tok = load(tok_dir, kind="tokenizer")
    check_compatible(cfg, clip, tok)
    return clip, tok


def check_compatible(cfg: DecoderConfig, clip: Any, tok: Any) -> None:
    if clip.config.embed_dim != cfg.clip_dim:
        raise ConfigError(
            f"decoder.clip_dim {cfg.clip_dim} != the CLIP's embed_dim {clip.config.embed_dim}"
        )
    if tok.vocab_size > cfg.vocab_size or tok.max_length > cfg.text_length:
        raise ConfigError(
            f"the tokenizer (vocab {tok.vocab_size}, {tok.max_length} tokens) does not fit "
            f"the decoder (vocab {cfg.vocab_size}, {cfg.text_length} tokens)"
        )


class DecoderBatches(DrawnBatches):
    """``{"images": (B, 3, S, S) in [0, 1], "text": (B, L) ids, "clip_emb": (B, D),
    "seed": int}``; resumable through the wrapped image stream."""

    def __init__(self, inner: BatchStream, clip: Any, tokenizer: Any, *, seed: int, rank: int):
        super().__init__(inner, seed=seed, rank=rank)
        self.clip, self.tokenizer = clip, tokenizer

    def make(self, batch: dict[str, Any], seed: int) -> dict[str, Any]:
        rngs = self.example_rngs(batch, seed)
        captions = [pick_caption(c, r) for c, r in zip(batch["captions"], rngs, strict=True)]
        seeds = [r.getrandbits(63) for r in rngs]
        enc = self.tokenizer.encode_batch(captions, train=True, add_eos=True, seed=seeds)
        return {
            "images": batch["images"],
            "text": enc.ids,
            "clip_emb": embed_images(self.clip, batch["images"]),
            "seed": seed,
        }


def make_batches(
    cfg: DecoderConfig, train: TrainConfig, data: DataSpec, ctx: DistContext
) -> BatchStream:
    clip, tok = load_frozen(cfg, data)
    inner = source_image_batches(
        data.source,
        image_size=cfg.image_size,
        batch_size=train.batch_size,
        seed=data.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        num_workers=train.num_workers,
    )
    return DecoderBatches(inner, clip, tok, seed=train.seed, rank=ctx.rank)


def make_objective(cfg: DecoderConfig) -> Objective:
    from tessera.diffusion import diffusion_loss, q_sample, schedule_for

    schedule = schedule_for(cfg.diffusion)

    def objective(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        x0 = batch["images"].to(device).float() * 2 - 1  # the diffusion's [-1, 1]
        b = x0.shape[0]
        g = generator_for(device, batch["seed"])
        t = torch.randint(0, schedule.num_steps, (b,), generator=g, device=device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        drop_clip = torch.rand(b, generator=g, device=device) < cfg.clip_dropout
        drop_text = torch.rand(b, generator=g, device=device) < cfg.text_dropout
        x_t = q_sample(schedule, x0, t, noise)
        out = model(
            x_t,
            t,
            clip_emb=batch["clip_emb"].to(device),
            text=batch["text"].to(device),
            drop_clip=drop_clip,
            drop_text=drop_text,
        )
        loss, terms = diffusion_loss(
            out.float(), x0=x0, x_t=x_t, t=t, noise=noise, s=schedule, cfg=cfg.diffusion
        )
        metrics = {k: float(v.detach().mean()) for k, v in terms.items()}
        return loss.mean(), metrics

    return objective


def eval_batch(cfg: DecoderConfig, clip: Any, tok: Any, n: int = 16) -> dict[str, Any]:
    """``n`` fixed ``shapes`` eval images with their canonical-first caption, ids and
    CLIP embeddings."""
    from tessera.training.data import shapes_image_batches

    batch = next(
        shapes_image_batches(
            split="eval", image_size=cfg.image_size, batch_size=n, seed=0, rank=0, world_size=1
        )
    )
    captions = [c[0] if isinstance(c, list | tuple) else c for c in batch["captions"]]
    return {
        "images": batch["images"],
        "captions": captions,
        "text": tok.encode_batch(captions, add_eos=True).ids,
        "clip_emb": embed_images(clip, batch["images"]),
    }


def make_sample_hook(cfg: DecoderConfig, data: DataSpec) -> Callable[[nn.Module, int, Path], None]:
    """Every ``sample_every`` updates: 16 fixed eval images decoded from their CLIP embedding
    and caption (25 DDIM steps, guidance 3), a side-by-side grid, and the share passing the
    checker for their caption, appended to ``eval.jsonl``."""
    held: dict[str, Any] = {}

    def hook(model: nn.Module, step: int, out_dir: Path) -> None:
        from tessera.data.images import save_side_by_side, to_uint8
        from tessera.data.shapes import check_image
        from tessera.sampling.unclip import decode

        if not held:
            clip, tok = load_frozen(cfg, data)
            held.update(eval_batch(cfg, clip, tok))
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
        images = decode(model, held["clip_emb"], held["text"], steps=25, generator=g)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_side_by_side(held["images"], images, out_dir / f"decoder_{step:07d}.png")
        passed = [
            check_image(img, cap).passed for img, cap in zip(to_uint8(images), held["captions"])
        ]
        record = {"step": step, "checker_pass": sum(passed) / len(passed), "n": len(passed)}
        append_eval(out_dir, record)

    return hook


def caption_tokenizer(cfg: Any, data: DataSpec) -> Any:
    """The tokenizer of the captions a decoder or prior is trained on (its release
    checkpoint carries it)."""
    return load_frozen(cfg, data)[1]


STAGE = Stage(
    name="decoder",
    model_config_cls=DecoderConfig,
    presets=stage_presets("decoder"),
    build_model=Decoder,
    objective=make_objective,
    make_batches=make_batches,
    sample_hook=make_sample_hook,
    export=exporter(caption_tokenizer),
    fit_inputs=fit_to_inputs,
)

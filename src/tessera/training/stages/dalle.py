"""DALL·E's transformer as a trainable stage: presets, data (frozen dVAE + tokenizer), loss.

Images are tokenized on the fly by a frozen dVAE checkpoint (argmax encode, no gradient) and
captions by the run's text tokenizer (BPE dropout in training, as the paper); one caption of
each image's captions is used per example. With ``caption_dropout > 0`` a seeded share of the
captions is replaced by the empty caption, which teaches the unconditional stream that
classifier-free guidance needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tessera.config.dalle import DalleConfig
from tessera.config.training import TrainConfig
from tessera.errors import ConfigError
from tessera.models.dalle import DALLE, empty_text, prepare_text, warn_truncated
from tessera.pipelines.dalle import (
    DallePipeline,
    check_compatible,
    export_checkpoint,
    load_image_tokenizer,
)
from tessera.training.data import BatchStream, DrawnBatches, pick_caption, source_image_batches
from tessera.training.distributed import DistContext
from tessera.training.stages.base import (
    DataSpec,
    Objective,
    Stage,
    append_eval,
    stage_presets,
)


class TokenBatches(DrawnBatches):
    """Wraps an image-caption batch stream: images -> dVAE tokens, captions -> text streams.

    Yields ``{"text": (B, text_len), "image": (B, grid**2), "seed": int}``; resumable through
    the wrapped stream's state.
    """

    def __init__(
        self,
        inner: BatchStream,
        vae: nn.Module,
        tokenizer: Any,
        cfg: DalleConfig,
        *,
        seed: int,
        rank: int,
    ) -> None:
        super().__init__(inner, seed=seed, rank=rank)
        self.vae, self.tokenizer, self.cfg = vae, tokenizer, cfg
        self.truncated = 0  # captions cut to text_len - 1 tokens so far (first batch warns)
        self._warned = False

    def make(self, batch: dict[str, Any], seed: int) -> dict[str, Any]:
        rngs = self.example_rngs(batch, seed)
        captions = [pick_caption(c, r) for c, r in zip(batch["captions"], rngs, strict=True)]
        seeds = [r.getrandbits(63) for r in rngs]
        enc = self.tokenizer.encode_batch(captions, train=True, seed=seeds)
        drop = torch.tensor([r.random() < self.cfg.caption_dropout for r in rngs])
        self.truncated += int((enc.lengths > self.cfg.text_len - 1).sum())
        if self.truncated and not self._warned:  # BPE dropout lengthens captions
            self._warned = bool(warn_truncated(enc.lengths, self.cfg, what="training caption"))
        text = prepare_text(enc.ids, enc.lengths, self.cfg)
        with torch.no_grad():
            image = self.vae.encode(batch["images"]).flatten(1)  # (B, grid**2)
        return {"text": text, "image": image, "drop_caption": drop, "seed": seed}


def load_frozen(cfg: DalleConfig, data: DataSpec) -> tuple[nn.Module, Any]:
    """The run's image tokenizer (a dVAE or a VQGAN; eval mode, no grad) and text tokenizer,
    checked against the model config."""
    from tessera.checkpoint import load

    if data.vae is None or data.tokenizer is None:
        raise ConfigError(
            "dalle training needs a dVAE checkpoint (--vae) and a tokenizer (--tokenizer)"
        )
    vae = load_image_tokenizer(data.vae)
    vae.requires_grad_(False)
    tok = load(data.tokenizer, kind="tokenizer")
    check_compatible(cfg, vae, tok)
    return vae, tok


def make_batches(
    cfg: DalleConfig, train: TrainConfig, data: DataSpec, ctx: DistContext
) -> BatchStream:
    vae, tok = load_frozen(cfg, data)
    inner = source_image_batches(
        data.source,
        image_size=vae.config.image_size,
        batch_size=train.batch_size,
        seed=data.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        num_workers=train.num_workers,
    )
    return TokenBatches(inner, vae, tok, cfg, seed=train.seed, rank=ctx.rank)


def make_objective(cfg: DalleConfig) -> Objective:
    def objective(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        text, image = batch["text"], batch["image"]
        if cfg.caption_dropout > 0:
            drop = batch["drop_caption"].to(text.device)  # drawn per example with its caption
            if drop.any():
                text = torch.where(drop[:, None], empty_text(text.shape[0], cfg, text.device), text)
        device = next(model.parameters()).device
        loss, text_ce, image_ce = model(text.to(device), image.to(device))
        return loss, {"text_ce": float(text_ce.detach()), "image_ce": float(image_ce.detach())}

    return objective


def make_sample_hook(cfg: DalleConfig, data: DataSpec) -> Callable[[nn.Module, int, Path], None]:
    """Every ``sample_every`` updates: samples for 16 fixed shapes eval prompts (grid PNG) and
    their strict checker pass rate, appended to ``eval.jsonl``."""
    assets: dict[str, Any] = {}

    def hook(model: nn.Module, step: int, out_dir: Path) -> None:
        from tessera.data.images import save_grid, to_uint8
        from tessera.evaluation.fidelity import fidelity_prompts, generate_and_score

        if not assets:
            assets["vae"], assets["tok"] = load_frozen(cfg, data)
        pipe = DallePipeline(model=model, vae=assets["vae"], tokenizer=assets["tok"])
        report, samples = generate_and_score(pipe, fidelity_prompts(16), seed=0)
        save_grid(to_uint8(samples.images), samples.prompt_index, out_dir / "samples.png")
        append_eval(out_dir, {"step": step, **report})

    return hook


def export(model: nn.Module, cfg: DalleConfig, out_dir: Path, data: DataSpec) -> Path:
    """A generation-ready directory: the transformer + its tokenizer, and the dVAE in ``vae/``."""
    from tessera.checkpoint import load

    vae, tok = load_image_tokenizer(data.vae), load(data.tokenizer, kind="tokenizer")
    return export_checkpoint(out_dir, model=model, vae=vae, tokenizer=tok)


STAGE = Stage(
    name="dalle",
    model_config_cls=DalleConfig,
    presets=stage_presets("dalle"),
    build_model=DALLE,
    objective=make_objective,
    make_batches=make_batches,
    sample_hook=make_sample_hook,
    export=export,
    needs=("vae", "tokenizer"),
)

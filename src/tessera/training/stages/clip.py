"""CLIP as a trainable stage: presets, data (images + tokenized captions), contrastive loss.

Each example contributes one of its captions (:func:`~tessera.training.data.pick_caption`),
encoded with ``<eos>`` at the end (the text encoder reads its embedding at ``<eos>``) and
with the tokenizer's BPE dropout, as the transformer's captions are; scoring encodes prompts
the same way but without dropout (``train=False``). With DDP the embeddings of
every rank are gathered before the loss, so each image's negatives are the whole global batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tessera.config.clip import CLIPConfig
from tessera.config.training import TrainConfig
from tessera.errors import ConfigError
from tessera.models.clip import CLIP, check_compatible, clip_loss, gather_features
from tessera.training.data import BatchStream, pick_caption, source_image_batches
from tessera.training.distributed import DistContext
from tessera.training.stages.base import DataSpec, Objective, Stage, stage_presets


class CaptionedImages:
    """Wraps an image-caption batch stream: one caption per image -> ``<eos>``-ended ids.

    Yields ``{"images": (B, 3, S, S) in [0, 1], "text": (B, max_length) int64}``; resumable
    through the wrapped stream's state.
    """

    def __init__(self, inner: BatchStream, tokenizer: Any) -> None:
        self.inner, self.tokenizer = inner, tokenizer

    def __iter__(self) -> CaptionedImages:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        batch = next(self.inner)
        captions = [pick_caption(c) for c in batch["captions"]]
        enc = self.tokenizer.encode_batch(captions, train=True, add_eos=True)
        return {"images": batch["images"], "text": enc.ids}

    def state_dict(self) -> dict[str, int]:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.inner.load_state_dict(state)


def load_tokenizer(cfg: CLIPConfig, data: DataSpec) -> Any:
    from tessera.checkpoint import load

    if data.tokenizer is None:
        raise ConfigError("clip training needs a text tokenizer (--tokenizer DIR)")
    tok = load(data.tokenizer, kind="tokenizer")
    check_compatible(cfg, tok)
    return tok


def make_batches(
    cfg: CLIPConfig, train: TrainConfig, data: DataSpec, ctx: DistContext
) -> BatchStream:
    tok = load_tokenizer(cfg, data)
    inner = source_image_batches(
        data.source,
        image_size=cfg.image_size,
        batch_size=train.batch_size,
        seed=data.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        num_workers=train.num_workers,
    )
    return CaptionedImages(inner, tok)


def contrastive_objective(
    model: nn.Module, batch: Any, step: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE over the global batch (every rank's embeddings gathered)."""
    device = next(model.parameters()).device
    img, txt, scale = model(batch["images"].to(device), batch["text"].to(device))
    img, txt = gather_features(img.float()), gather_features(txt.float())  # (N_global, D)
    loss = clip_loss(img, txt, scale.float())
    with torch.no_grad():
        hits = (img @ txt.t()).argmax(1) == torch.arange(img.shape[0], device=img.device)
    return loss, {"acc_i2t": float(hits.float().mean()), "logit_scale": float(scale.detach())}


def make_objective(cfg: CLIPConfig) -> Objective:
    return contrastive_objective


def heldout_pairs(cfg: CLIPConfig, tokenizer: Any, n: int = 256) -> dict[str, torch.Tensor]:
    """A fixed batch of ``shapes`` eval-split images with one tokenized caption each."""
    from tessera.training.data import shapes_image_batches

    inner = shapes_image_batches(
        split="eval", image_size=cfg.image_size, batch_size=n, seed=0, rank=0, world_size=1
    )
    return next(CaptionedImages(inner, tokenizer))


def make_sample_hook(cfg: CLIPConfig, data: DataSpec) -> Callable[[nn.Module, int, Path], None]:
    """Every ``sample_every`` updates: image->text and text->image recall@1 on 256 fixed
    ``shapes`` eval pairs, appended to ``eval.jsonl``."""
    held: dict[str, Any] = {}

    def hook(model: nn.Module, step: int, out_dir: Path) -> None:
        from tessera.evaluation.retrieval import recall_at_k

        if not held:
            held.update(heldout_pairs(cfg, load_tokenizer(cfg, data)))
        device = next(model.parameters()).device
        with torch.no_grad():
            img = model.encode_image(held["images"].to(device)).float()
            txt = model.encode_text(held["text"].to(device)).float()
        i2t, t2i = recall_at_k(img @ txt.t(), 1)
        record = {"step": step, "recall1_i2t": i2t, "recall1_t2i": t2i, "pairs": img.shape[0]}
        with (out_dir.parent / "eval.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")

    return hook


def build_model(cfg: CLIPConfig) -> CLIP:
    return CLIP(cfg)


def export(model: nn.Module, cfg: CLIPConfig, out_dir: Path, data: DataSpec) -> Path:
    """A scoring-ready directory: the model with its tokenizer."""
    from tessera.checkpoint import save

    tok = load_tokenizer(cfg, data)
    return save(out_dir, config=cfg, model=model, tokenizer=tok, overwrite=True)


STAGE = Stage(
    name="clip",
    model_config_cls=CLIPConfig,
    presets=stage_presets("clip"),
    build_model=build_model,
    objective=make_objective,
    make_batches=make_batches,
    sample_hook=make_sample_hook,
    export=export,
    needs=("tokenizer",),
)

"""CLIP as a trainable stage: presets, data (images + tokenized captions), contrastive loss.

Each example contributes one of its captions (:func:`~tessera.training.data.pick_caption`),
encoded with ``<eos>`` at the end (the text encoder reads its embedding at ``<eos>``) and
with the tokenizer's BPE dropout, as the transformer's captions are; scoring encodes prompts
the same way but without dropout (``train=False``). With DDP the embeddings of
every rank are gathered before the loss, so each image's negatives are the whole global batch.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tessera.config.clip import CLIPConfig
from tessera.config.training import TrainConfig
from tessera.errors import ConfigError
from tessera.models.clip import (
    CLIP,
    check_compatible,
    clip_loss,
    clip_loss_with_negatives,
    gather_features,
)
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


class CaptionedImages(DrawnBatches):
    """Wraps an image-caption batch stream: one caption per image -> ``<eos>``-ended ids.

    Yields ``{"images": (B, 3, S, S) in [0, 1], "text": (B, max_length) int64}``; with
    ``hard_negatives = M > 0`` the caption is one of the example's canonical ones (when it
    has any) and ``"negatives"`` (B * M, max_length) / ``"negative_mask"`` (B, M) hold up to M
    captions contradicting it in one claim. Every choice is drawn from the batch's own seed
    (:class:`~tessera.training.data.DrawnBatches`), so a resumed run sees the same batches.
    """

    def __init__(
        self,
        inner: BatchStream,
        tokenizer: Any,
        *,
        seed: int,
        rank: int,
        hard_negatives: int = 0,
        exclude_pairs: tuple[str, ...] = (),
    ) -> None:
        super().__init__(inner, seed=seed, rank=rank)
        self.tokenizer = tokenizer
        self.hard_negatives, self.exclude_pairs = hard_negatives, exclude_pairs

    def make(self, batch: dict[str, Any], seed: int) -> dict[str, Any]:
        rngs = self.example_rngs(batch, seed)
        if self.hard_negatives <= 0:
            captions = [pick_caption(c, r) for c, r in zip(batch["captions"], rngs, strict=True)]
            seeds = [r.getrandbits(63) for r in rngs]
            enc = self.tokenizer.encode_batch(captions, train=True, add_eos=True, seed=seeds)
            return {"images": batch["images"], "text": enc.ids}
        captions, negatives = [], []
        for caps, rng in zip(batch["captions"], rngs, strict=True):
            caption, negs = self._with_negatives(caps, rng)
            captions.append(caption)
            negatives.append(negs)
        m = self.hard_negatives
        mask = torch.tensor([[j < len(n) for j in range(m)] for n in negatives])
        flat = [n[j] if j < len(n) else "" for n in negatives for j in range(m)]
        enc = self.tokenizer.encode_batch(captions, train=True, add_eos=True, seed=seed)
        neg = self.tokenizer.encode_batch(flat, train=True, add_eos=True, seed=seed + 1)
        return {
            "images": batch["images"],
            "text": enc.ids,
            "negatives": neg.ids,
            "negative_mask": mask,
        }

    def _with_negatives(self, captions: Any, rng: random.Random) -> tuple[str, list[str]]:
        import numpy as np

        from tessera.data.shapes import parse_prompt
        from tessera.data.shapes.negatives import hard_negatives
        from tessera.errors import DataError

        caps = [captions] if isinstance(captions, str) else list(captions)
        canonical = []
        for c in caps:
            try:
                parse_prompt(c)
            except DataError:
                continue
            canonical.append(c)
        caption = pick_caption(canonical or caps, rng)
        negs = hard_negatives(
            caption,
            self.hard_negatives,
            np.random.default_rng(rng.getrandbits(64)),
            exclude_pairs=self.exclude_pairs,
        )
        return caption, negs


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
    return CaptionedImages(
        inner,
        tok,
        seed=train.seed,
        rank=ctx.rank,
        hard_negatives=cfg.hard_negatives,
        exclude_pairs=_held_out(data),
    )


def _held_out(data: DataSpec) -> tuple[str, ...]:
    """The colour-shape pairs the run's ``shapes`` training split never shows (none for other
    data): hard negatives must not name them either."""
    if data.source.split(":")[0] != "shapes":
        return ()
    from tessera.config.shapes import ShapesConfig

    return tuple(ShapesConfig().held_out)


def contrastive_objective(
    model: nn.Module, batch: Any, step: int
) -> tuple[torch.Tensor, dict[str, float]]:
    """Symmetric InfoNCE over the global batch (every rank's embeddings gathered)."""
    device = next(model.parameters()).device
    text = batch["text"].to(device)
    b = text.shape[0]
    if "negatives" in batch:  # one text batch: the captions, then their hard negatives
        text = torch.cat([text, batch["negatives"].to(device)])
    img, txt, scale = model(batch["images"].to(device), text)
    txt, neg = txt[:b], txt[b:]
    img, txt = gather_features(img.float()), gather_features(txt.float())  # (N_global, D)
    if "negatives" in batch:
        # Each rank scores its own images against its own negatives; other ranks' rows get
        # empty slots (their images' negatives live on their ranks).
        m = neg.shape[0] // b
        full = neg.new_zeros(img.shape[0], m, neg.shape[-1])
        mask = torch.zeros(img.shape[0], m, dtype=torch.bool, device=img.device)
        lo = _rank_offset(b)
        full[lo : lo + b] = neg.float().view(b, m, -1)
        mask[lo : lo + b] = batch["negative_mask"].to(device)
        loss = clip_loss_with_negatives(img, txt, full, mask, scale.float())
    else:
        loss = clip_loss(img, txt, scale.float())
    with torch.no_grad():
        hits = (img @ txt.t()).argmax(1) == torch.arange(img.shape[0], device=img.device)
    return loss, {"acc_i2t": float(hits.float().mean()), "logit_scale": float(scale.detach())}


def _rank_offset(local: int) -> int:
    import torch.distributed as dist

    return dist.get_rank() * local if dist.is_available() and dist.is_initialized() else 0


def make_objective(cfg: CLIPConfig) -> Objective:
    return contrastive_objective


def heldout_pairs(cfg: CLIPConfig, tokenizer: Any, n: int = 256) -> dict[str, torch.Tensor]:
    """A fixed batch of ``shapes`` eval-split images with one tokenized caption each."""
    from tessera.training.data import shapes_image_batches

    inner = shapes_image_batches(
        split="eval", image_size=cfg.image_size, batch_size=n, seed=0, rank=0, world_size=1
    )
    return next(CaptionedImages(inner, tokenizer, seed=0, rank=0))


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
        append_eval(out_dir, record)

    return hook


STAGE = Stage(
    name="clip",
    model_config_cls=CLIPConfig,
    presets=stage_presets("clip"),
    build_model=CLIP,
    objective=make_objective,
    make_batches=make_batches,
    sample_hook=make_sample_hook,
    export=exporter(load_tokenizer),  # a scoring-ready directory: the model + its tokenizer
    needs=("tokenizer",),
)

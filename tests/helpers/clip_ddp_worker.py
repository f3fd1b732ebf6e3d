"""CLIP's gathered contrastive loss on two real processes, for
``tests/integration/test_clip_ddp.py`` (gloo on CPU)::

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        tests/helpers/clip_ddp_worker.py --out DIR

Every rank writes ``rank<R>.json`` (losses) and ``rank<R>.safetensors`` (DDP-averaged
gradients of one step, final weights of a short trainer run). The module is also imported by
the test for the model, the data and the single-process reference.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `helpers` when run as a script

WORLD = 2
BATCH = 4  # per rank
STEPS = 3


def model_config() -> Any:
    from tessera.config.presets import preset

    return preset("clip", "tiny")


def build_model() -> Any:
    from tessera.models.clip import CLIP

    torch.manual_seed(0)
    return CLIP(model_config())


def global_batch(b: int) -> dict[str, torch.Tensor]:
    """Global batch ``b``: WORLD * BATCH random images and ``<eos>``-ended random texts."""
    cfg = model_config()
    g = torch.Generator().manual_seed(1000 + b)
    n = WORLD * BATCH
    images = torch.rand(n, 3, cfg.image_size, cfg.image_size, generator=g)
    ids = torch.zeros(n, cfg.context_length, dtype=torch.long)
    lengths = torch.randint(1, cfg.context_length - 1, (n,), generator=g)
    for i, k in enumerate(lengths.tolist()):
        ids[i, :k] = torch.randint(3, cfg.vocab_size, (k,), generator=g)
        ids[i, k] = cfg.eos_id
    return {"images": images, "text": ids}


def rank_slice(batch: dict[str, torch.Tensor], rank: int, world: int) -> dict[str, torch.Tensor]:
    n = batch["images"].shape[0] // world
    return {k: v[rank * n : (rank + 1) * n] for k, v in batch.items()}


class Batches:
    """Resumable stream of this rank's slices (``world=1``: the whole global batches)."""

    def __init__(self, rank: int, world: int) -> None:
        self.rank, self.world, self.b = rank, world, 0

    def __next__(self) -> dict[str, torch.Tensor]:
        self.b += 1
        return rank_slice(global_batch(self.b - 1), self.rank, self.world)

    def state_dict(self) -> dict[str, int]:
        return {"b": self.b}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.b = int(state["b"])


def build_trainer(run_dir: Path, rank: int, world: int, ctx: Any = None) -> tuple[Any, list]:
    """A short trainer run (BATCH per rank); returns it and the list its losses go to."""
    from tessera.config.training import TrainConfig
    from tessera.training.stages.clip import contrastive_objective
    from tessera.training.trainer import Trainer

    cfg = TrainConfig(steps=STEPS, batch_size=BATCH * (WORLD // world), lr=1e-3, grad_clip=0.0)
    cfg = cfg.replace(weight_decay=0.0, checkpoint_every=STEPS, lr_schedule="constant")
    trainer = Trainer(
        model=build_model(),
        objective=contrastive_objective,
        batches=Batches(rank, world),
        config=cfg,
        run_dir=run_dir,
        ctx=ctx,
        model_config=model_config(),
        progress=False,
    )
    losses: list[float] = []
    inner = trainer._train_step

    def step() -> tuple[float, dict, int]:
        loss, metrics, n = inner()
        losses.append(loss)
        return loss, metrics, n

    trainer._train_step = step
    return trainer, losses


def main() -> None:
    from safetensors.torch import save_file

    from tessera.models.clip import clip_loss
    from tessera.training.distributed import init_distributed, wrap_ddp
    from tessera.training.stages.clip import contrastive_objective

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    ctx = init_distributed(timeout_s=30.0)
    r = ctx.rank

    # one forward/backward through DDP: the gathered loss and the averaged gradients
    model = build_model()
    ddp, _ = wrap_ddp(model, ctx)
    batch = rank_slice(global_batch(0), r, ctx.world_size)
    loss, metrics = contrastive_objective(ddp, batch, 0)
    loss.backward()
    tensors = {f"grad.{k}": v.grad.detach().clone() for k, v in model.named_parameters()}
    with torch.no_grad():
        img, txt, scale = model(batch["images"], batch["text"])
        local = float(clip_loss(img, txt, scale))  # negatives from this rank only

    trainer, losses = build_trainer(out / f"run{r}", r, ctx.world_size, ctx)
    trainer.fit()
    tensors.update(
        {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    )
    save_file(tensors, str(out / f"rank{r}.safetensors"))
    info = {"loss": float(loss), "local_loss": local, "metrics": metrics, "steps": losses}
    (out / f"rank{r}.json").write_text(json.dumps(info))
    ctx.barrier()
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown (gloo threads; see ddp_worker.py)


if __name__ == "__main__":
    main()

"""An unCLIP upsampler as a trainable stage: full-size images -> random crops (the paper's
"random crops of images that are one-fourth the target size") -> the low-resolution crop,
corrupted (blur or BSR) -> the diffusion loss of the super-resolution UNet.

The crop positions, corruptions, noise levels and noise of a batch come from generators
seeded from the batch's own seed (run seed, rank, batch index:
:class:`~tessera.training.data.DrawnBatches`; a CPU one for the pixel work, one on the
model's device for the diffusion draws, with different seeds), so a resumed run draws the
same ones.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.training import TrainConfig
from tessera.config.upsampler import UpsamplerConfig
from tessera.data.images import psnr
from tessera.models.upsampler import Upsampler
from tessera.nn.rng import generator_for
from tessera.training.data import BatchStream, DrawnBatches, source_image_batches
from tessera.training.distributed import DistContext
from tessera.training.stages.base import (
    DataSpec,
    Objective,
    Stage,
    append_eval,
    exporter,
    stage_presets,
)


def downsample(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, size, size): antialiased bilinear (how the low-res inputs are
    made from the targets in training)."""
    return F.interpolate(
        images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
    ).clamp(0, 1)


def training_pair(
    cfg: UpsamplerConfig, images: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(target crops (B, 3, c, c), corrupted low-res crops (B, 3, c/k, c/k)), in [0, 1]."""
    from tessera.data.degrade import degrade

    crop = cfg.crop_size or cfg.image_size
    # crops aligned to the scale factor, so the low-res crop is an exact region
    k = cfg.scale
    b = images.shape[0]
    side = images.shape[-1]
    ys = (torch.randint(0, (side - crop) // k + 1, (b,), generator=generator) * k).tolist()
    xs = (torch.randint(0, (side - crop) // k + 1, (b,), generator=generator) * k).tolist()
    target = torch.stack(
        [images[i, :, y : y + crop, x : x + crop] for i, (y, x) in enumerate(zip(ys, xs))]
    )
    low = downsample(target, crop // k)
    low = degrade(
        low,
        cfg.degradation,
        generator=generator,
        prob=cfg.corrupt_prob,
        blur_kernel=cfg.blur_kernel,
        blur_sigma=cfg.blur_sigma,
    )
    return target, low


def make_batches(
    cfg: UpsamplerConfig, train: TrainConfig, data: DataSpec, ctx: DistContext
) -> BatchStream:
    inner = source_image_batches(
        data.source,
        image_size=cfg.image_size,
        batch_size=train.batch_size,
        seed=data.seed,
        rank=ctx.rank,
        world_size=ctx.world_size,
        num_workers=train.num_workers,
    )
    return SeededImages(inner, seed=train.seed, rank=ctx.rank)


class SeededImages(DrawnBatches):
    """``{"images": (B, 3, S, S), "seed": int}``: the full-size images and their draws' seed."""

    def make(self, batch: dict[str, Any], seed: int) -> dict[str, Any]:
        return {"images": batch["images"], "seed": seed}


# added to a batch's seed for the crop / corruption generator: CPU generators keep only the
# low 32 bits of a seed, and two generators seeded alike on a CPU device give the same numbers
PIXEL_SEED_OFFSET = 0x9E3779B9


def make_objective(cfg: UpsamplerConfig) -> Objective:
    from tessera.diffusion import diffusion_loss, q_sample, schedule_for

    schedule = schedule_for(cfg.diffusion)

    def objective(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        # the pixel draws get their own seed: on a CPU device, two generators seeded alike give
        # the same numbers (the crop rows would be t mod the number of positions)
        pixels = torch.Generator().manual_seed((batch["seed"] + PIXEL_SEED_OFFSET) % 2**63)
        with torch.autocast(device.type, enabled=False):  # pixel work in float32
            target, low = training_pair(cfg, batch["images"], pixels)
        x0 = target.to(device) * 2 - 1
        b = x0.shape[0]
        g = generator_for(device, batch["seed"])
        t = torch.randint(0, schedule.num_steps, (b,), generator=g, device=device)
        noise = torch.randn(x0.shape, generator=g, device=device)
        x_t = q_sample(schedule, x0, t, noise)
        out = model(x_t, t, low_res=low.to(device) * 2 - 1)
        loss, terms = diffusion_loss(
            out.float(), x0=x0, x_t=x_t, t=t, noise=noise, s=schedule, cfg=cfg.diffusion
        )
        return loss.mean(), {k: float(v.detach().mean()) for k, v in terms.items()}

    return objective


def make_sample_hook(
    cfg: UpsamplerConfig, data: DataSpec
) -> Callable[[nn.Module, int, Path], None]:
    """Every ``sample_every`` updates: 8 fixed eval images downsampled to the input size and
    upsampled at full size (7 DDIM steps) beside the originals, with PSNR to the originals."""
    held: dict[str, torch.Tensor] = {}

    def hook(model: nn.Module, step: int, out_dir: Path) -> None:
        from tessera.data.images import save_side_by_side
        from tessera.sampling.unclip import upsample
        from tessera.training.data import shapes_image_batches

        if not held:
            held["images"] = next(
                shapes_image_batches(
                    split="eval",
                    image_size=cfg.image_size,
                    batch_size=8,
                    seed=0,
                    rank=0,
                    world_size=1,
                )
            )["images"]
        g = torch.Generator(device=next(model.parameters()).device).manual_seed(0)
        out = upsample(model, downsample(held["images"], cfg.low_res_size), generator=g)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_side_by_side(held["images"], out, out_dir / f"upsampler_{step:07d}.png")
        batch_psnr = psnr(out.reshape(1, -1), held["images"].reshape(1, -1))  # the whole batch
        record = {"step": step, "psnr": float(batch_psnr[0])}
        append_eval(out_dir, record)

    return hook


STAGE = Stage(
    name="upsampler",
    model_config_cls=UpsamplerConfig,
    presets=stage_presets("upsampler"),
    build_model=Upsampler,
    objective=make_objective,
    make_batches=make_batches,
    sample_hook=make_sample_hook,
    export=exporter(),
)

"""The VQGAN image tokenizer as a trainable stage: L1 + perceptual + codebook losses, and
taming's hinge GAN loss as an option (off in the CPU presets).

The perceptual network. taming-transformers measures LPIPS in an ImageNet VGG16, whose weights
would have to be downloaded; tessera uses a network it already has on disk: the vision tower of
the CLIP shipped with tessera's shapes pipeline (``tessera/assets/shapes/pipeline/clip``, a
4-layer ViT trained contrastively on shapes captions at 32 x 32 px, patch 4). Images are cut
into 32 x 32 tiles (resized up to a multiple of 32 first when needed), each tile goes through
the tower, and the distance is LPIPS's form on the token features after every layer:
unit-normalise each token's feature vector, squared difference summed over channels, averaged
over tokens, tiles and images, summed over layers. Tiling keeps every pixel at the resolution
the tower was trained on, at any image size. It is a network trained on shapes, so on natural
images it is a weaker guide than LPIPS; ``perceptual=none`` turns it off.

The GAN term uses one optimizer (the trainer's): the discriminator is part of the trained
module, its hinge loss sees detached reconstructions, and the generator's loss is computed
through a copy of the discriminator whose parameters are detached
(``torch.func.functional_call``), so each loss reaches only its own side's weights in one
backward pass. The weight is fixed (``adversarial_weight``), not taming's adaptive weight
(a ratio of gradient norms at the decoder's last layer, which needs two extra backward passes).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.training import TrainConfig
from tessera.config.vqgan import VQGANConfig
from tessera.data.images import psnr
from tessera.nn.rng import generator_for
from tessera.training.data import BatchStream, DrawnBatches, source_image_batches
from tessera.training.distributed import DistContext
from tessera.training.stages.base import DataSpec, Objective, Stage, append_eval, stage_presets
from tessera.vae.vqgan import VQGAN

TILE = 32  # the shipped shapes CLIP's image size


class PatchDiscriminator(nn.Module):
    """taming's ``NLayerDiscriminator`` (pix2pix PatchGAN): strided 4x4 convs with LeakyReLU,
    one logit per patch; GroupNorm (one group) instead of BatchNorm, so a batch of one and
    data-parallel ranks behave alike."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__()
        c = cfg.disc_channels
        layers: list[nn.Module] = [nn.Conv2d(cfg.out_channels, c, 4, 2, 1), nn.LeakyReLU(0.2)]
        mult = 1
        for n in range(1, cfg.disc_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < cfg.disc_layers else 1
            layers += [
                nn.Conv2d(c * prev, c * mult, 4, stride, 1, bias=False),
                nn.GroupNorm(1, c * mult),
                nn.LeakyReLU(0.2),
            ]
        layers.append(nn.Conv2d(c * mult, 1, 4, 1, 1))
        self.main = nn.Sequential(*layers)
        for m in self.modules():  # taming's weights_init
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x)


class CLIPTilePerceptual:
    """The perceptual distance in the shipped shapes CLIP's vision tower (module docstring).
    Frozen and kept outside the trained module (not in its state dict or optimizer)."""

    def __init__(self, clip: nn.Module) -> None:
        self.clip = clip.eval().requires_grad_(False)
        cfg = clip.config
        self.size = cfg.image_size
        self.mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1)
        self.std = torch.tensor(cfg.image_std).view(1, 3, 1, 1)

    def to(self, device: torch.device) -> CLIPTilePerceptual:
        self.clip.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) in [0, 1] -> per layer (B * tiles, tokens, width), unit-norm."""
        s = self.size
        h, w = images.shape[-2:]
        if h % s or w % s:
            size = (-(-h // s) * s, -(-w // s) * s)
            images = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
            h, w = size
        x = (images - self.mean) / self.std
        tiles = x.unfold(2, s, s).unfold(3, s, s)  # (B, 3, h/s, w/s, s, s)
        tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, s, s)
        v = self.clip.visual
        t = v.conv1(tiles.to(v.conv1.weight.dtype)).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(t.dtype).expand(t.shape[0], 1, -1)
        t = v.ln_pre(torch.cat([cls, t], dim=1) + v.positional_embedding.to(t.dtype))
        feats = []
        for block in v.transformer.resblocks:
            t = block(t)
            feats.append(F.normalize(t.float(), dim=-1, eps=1e-10))
        return feats

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Mean perceptual distance between image batches in [0, 1] (scalar)."""
        fa, fb = self.features(a), self.features(b.detach())
        return sum(((x - y) ** 2).sum(-1).mean() for x, y in zip(fa, fb))


@functools.lru_cache(maxsize=1)
def _shipped_clip() -> nn.Module:
    from tessera.checkpoint import load, shipped_dir

    return load(shipped_dir("pipeline", "clip"), kind="clip")


def perceptual_net(cfg: VQGANConfig) -> CLIPTilePerceptual | None:
    if cfg.perceptual == "none" or cfg.perceptual_weight == 0:
        return None
    import copy

    return CLIPTilePerceptual(copy.deepcopy(_shipped_clip()))


class VQGANTrainee(VQGAN):
    """The VQGAN with what training adds: a discriminator (when ``adversarial_weight > 0``)
    and the loss in ``forward``. Without the discriminator its state dict is the VQGAN's, so
    its training checkpoints load as ``vqgan`` checkpoints too."""

    def __init__(self, cfg: VQGANConfig) -> None:
        super().__init__(cfg)
        self.discriminator = PatchDiscriminator(cfg) if cfg.adversarial_weight > 0 else None
        self._perceptual: list[CLIPTilePerceptual | None] = []  # built on first use, unregistered

    def perceptual(self, device: torch.device) -> CLIPTilePerceptual | None:
        if not self._perceptual:
            net = perceptual_net(self.config)
            self._perceptual.append(None if net is None else net.to(device))
        return self._perceptual[0]

    def forward(  # type: ignore[override]
        self, images: torch.Tensor, *, step: int = 0, seed: int = 0
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The whole training loss of one batch (B, 3, H, W) in [0, 1]: (loss, metrics)."""
        cfg = self.config
        gen = generator_for(images.device, seed) if cfg.quantizer == "gumbel" else None
        rec, codebook, tokens = super().forward(images, generator=gen)
        x = 2.0 * images.to(rec.dtype) - 1.0
        l1 = (rec.float() - x.float()).abs().mean()
        loss = cfg.l1_weight * l1 + codebook
        metrics = {"l1": l1.detach(), "codebook": codebook.detach()}
        net = self.perceptual(images.device)
        if net is not None:
            p = net((rec.float() + 1) / 2, images.float())
            loss = loss + cfg.perceptual_weight * p
            metrics["perceptual"] = p.detach()
        d = self.discriminator
        if d is not None and step >= cfg.adversarial_start:
            frozen = {k: v.detach() for k, v in d.named_parameters()}
            g_loss = -torch.func.functional_call(d, frozen, (rec,)).float().mean()
            real, fake = d(x.to(rec.dtype)).float(), d(rec.detach()).float()
            d_loss = 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())
            loss = loss + cfg.adversarial_weight * g_loss + d_loss
            metrics.update({"g_loss": g_loss.detach(), "d_loss": d_loss.detach()})
        metrics["codes_used"] = torch.tensor(float(torch.unique(tokens).numel()))
        return loss, metrics

    def release(self) -> VQGAN:
        """A plain :class:`VQGAN` holding these weights (the discriminator left out)."""
        out = VQGAN(self.config)
        sd = {k: v for k, v in self.state_dict().items() if not k.startswith("discriminator.")}
        out.load_state_dict(sd, strict=True)
        return out.eval()


class ImageBatches(DrawnBatches):
    """Images and the seed of the batch's draws (the Gumbel noise)."""

    def make(self, batch: dict[str, Any], seed: int) -> dict[str, Any]:
        return {"images": batch["images"], "seed": seed}


def make_batches(
    cfg: VQGANConfig, train: TrainConfig, data: DataSpec, ctx: DistContext
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
    return ImageBatches(inner, seed=train.seed, rank=ctx.rank)


def make_objective(cfg: VQGANConfig) -> Objective:
    def objective(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        device = next(model.parameters()).device
        loss, metrics = model(batch["images"].to(device), step=step, seed=batch["seed"])
        return loss, {k: float(v) for k, v in metrics.items()}

    return objective


def _plain(model: nn.Module) -> VQGAN:
    model = getattr(model, "module", model)
    return model.release() if isinstance(model, VQGANTrainee) else model


def make_sample_hook(
    cfg: VQGANConfig, data: DataSpec | None = None
) -> Callable[[nn.Module, int, Path], None]:
    """Every ``sample_every`` updates: held-out PSNR, codebook use, a reconstruction grid."""
    held: dict[str, torch.Tensor] = {}

    def hook(model: nn.Module, step: int, out_dir: Path) -> None:
        from tessera.data.images import save_side_by_side
        from tessera.training.stages.vae import heldout_images

        if "x" not in held:
            held["x"] = heldout_images(cfg)
        vq = _plain(model)
        x = held["x"].to(next(vq.parameters()).device)
        tokens = vq.encode(x)
        rec = vq.decode(tokens)
        record = {
            "step": step,
            "heldout_psnr": float(psnr(rec, x).mean()),
            "codes_used": int(torch.unique(tokens).numel()),
        }
        append_eval(out_dir, record)
        save_side_by_side(x[:16], rec[:16], out_dir / f"recon-{step:08d}.png")

    return hook


def export(model: nn.Module, cfg: VQGANConfig, out_dir: Path, data: DataSpec) -> Path:
    """The release checkpoint: a plain ``vqgan`` (no discriminator)."""
    from tessera.checkpoint import save

    return save(out_dir, config=cfg, model=_plain(model), overwrite=True)


STAGE = Stage(
    name="vqgan",
    model_config_cls=VQGANConfig,
    presets=stage_presets("vqgan"),
    build_model=VQGANTrainee,
    objective=make_objective,
    make_batches=make_batches,
    sample_hook=make_sample_hook,
    export=export,
)

"""Sampling glue between the unCLIP models and the pure diffusion samplers: the decoder with
classifier-free guidance, DDIM inversion of an image, and the upsamplers.

Images in and out are (B, 3, H, W) in [0, 1] (the library's convention); the models work in
the diffusion's [-1, 1]. Timestep respacing is a sampling choice: ``steps`` picks that many
evenly strided steps of the training schedule (``"ddimN"`` when it divides T evenly).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tessera.config.diffusion import DiffusionConfig
from tessera.diffusion import (
    ModelFn,
    Schedule,
    classifier_free_guidance,
    ddim_invert,
    ddim_sample,
    ddpm_sample,
    repaint_sample,
    respace,
    schedule_for,
)
from tessera.models.clip import CLIP
from tessera.models.decoder import Decoder
from tessera.models.upsampler import Upsampler


@torch.no_grad()
def embed_images(clip: CLIP, images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, S, S) in [0, 1] -> L2-normalised CLIP image embeddings z_i (B, D) float32,
    resized (bilinear, antialiased) to the CLIP's input size when S differs."""
    size = clip.config.image_size
    device = next(clip.parameters()).device
    images = images.to(device).float()
    if images.shape[-1] != size:
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    with torch.autocast(device.type, enabled=False):
        z_i: torch.Tensor = clip.encode_image(images).float()
    return z_i


def sampling_schedule(cfg_diffusion: DiffusionConfig, steps: int) -> Schedule:
    """The training schedule respaced to ``steps`` evenly spaced steps."""
    base = schedule_for(cfg_diffusion)
    return base if steps == base.num_steps else respace(base, str(steps))


@contextlib.contextmanager
def _inference(model: nn.Module, autocast: bool) -> Iterator[torch.device]:
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with (
            torch.no_grad(),
            torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast),
        ):
            yield device
    finally:
        model.train(was_training)


def decoder_fn(
    decoder: Decoder,
    clip_emb: torch.Tensor,
    text: torch.Tensor | None = None,
    *,
    guidance: float = 1.0,
) -> ModelFn:
    """The decoder as ``model_fn(x_t, t)``: conditioned on ``clip_emb`` (B, D) and ``text``
    (B, L); with ``guidance`` != 1, classifier-free guidance against the null embedding and
    an empty caption in one batched call (unCLIP guides both together)."""

    def cond(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = decoder(x, t, clip_emb=clip_emb, text=text)
        return out.float()

    if guidance == 1.0:
        return cond
    b = clip_emb.shape[0]
    both = torch.cat([clip_emb, clip_emb])
    text2 = None if text is None else torch.cat([text, text])
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)])

    def pair(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = decoder(x, t, clip_emb=both, text=text2, drop_clip=drop, drop_text=drop)
        return out.float()

    return classifier_free_guidance(pair, guidance, channels=3)


def decode(
    decoder: Decoder,
    clip_emb: torch.Tensor,
    text: torch.Tensor | None = None,
    *,
    steps: int = 25,
    guidance: float = 3.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    sampler: str = "ddim",
    autocast: bool = False,
    progress: bool = False,
    known: Known | None = None,
) -> torch.Tensor:
    """CLIP image embeddings (B, D) [+ caption ids (B, L)] -> images (B, 3, S, S) in [0, 1]
    with ``steps`` respaced steps: ``sampler`` ``ddim`` (with ``eta``; 0: deterministic
    given x_T) or ``ddpm`` (ancestral with the decoder's own variance -- the paper samples its
    learned-sigma decoder this way, with 250 strided steps). With ``known`` the decoder
    inpaints: RePaint (DDIM steps with ``eta``) keeps the known pixels."""
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    d = decoder.config.diffusion
    s = sampling_schedule(d, steps)
    with _inference(decoder, autocast) as device:
        clip_emb = clip_emb.to(device)
        text = None if text is None else text.to(device)
        fn = decoder_fn(decoder, clip_emb, text, guidance=guidance)
        size = decoder.config.image_size
        noise = None if x_T is None else x_T.to(device)
        shape = (clip_emb.shape[0], 3, size, size)
        if known is not None:
            x = known.sample(fn, s, d, eta=eta, generator=generator, device=device, size=size)
        elif sampler == "ddpm":
            x = ddpm_sample(
                fn, s, shape, prediction=d.prediction, variance=d.variance, clip_x0=d.clip_x0,
                generator=generator, x_T=noise, device=device, progress=progress,
            )  # fmt: skip
        else:
            x = ddim_sample(
                fn, s, shape, prediction=d.prediction, variance=d.variance, eta=eta,
                clip_x0=d.clip_x0, generator=generator, x_T=noise, device=device,
                progress=progress,
            )  # fmt: skip
    return ((x.float() + 1) / 2).clamp(0, 1)


def invert(
    decoder: Decoder,
    images: torch.Tensor,
    clip_emb: torch.Tensor,
    text: torch.Tensor | None = None,
    *,
    steps: int = 50,
    guidance: float = 1.0,
    autocast: bool = False,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM inversion (unCLIP §3): images (B, 3, S, S) in [0, 1] -> x_T such that
    ``decode(..., x_T=x_T, eta=0, steps=steps, guidance=guidance)`` reconstructs them."""
    cfg = decoder.config
    s = sampling_schedule(cfg.diffusion, steps)
    with _inference(decoder, autocast) as device:
        fn = decoder_fn(
            decoder,
            clip_emb.to(device),
            None if text is None else text.to(device),
            guidance=guidance,
        )
        x0 = images.to(device).float() * 2 - 1
        return ddim_invert(
            fn,
            s,
            x0,
            prediction=cfg.diffusion.prediction,
            variance=cfg.diffusion.variance,
            clip_x0=cfg.diffusion.clip_x0,  # the same x0 clamp as decode: one ODE both ways
            progress=progress,
        ).float()


def upsample(
    upsampler: Upsampler,
    low_res: torch.Tensor,
    *,
    steps: int = 7,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    autocast: bool = False,
    progress: bool = False,
    known: Known | None = None,
) -> torch.Tensor:
    """Images (B, 3, s, s) in [0, 1] -> (B, 3, k*s, k*s) in [0, 1] by DDIM (paper: 27 and 15
    steps; karlo: 7). Runs at the full size whatever crop size it was trained on. With
    ``known`` it keeps the known pixels (RePaint, DDIM steps with ``eta``)."""
    cfg = upsampler.config
    s = sampling_schedule(cfg.diffusion, steps)
    side = low_res.shape[-1] * cfg.scale
    with _inference(upsampler, autocast) as device:
        cond = low_res.to(device).float() * 2 - 1

        def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = upsampler(x, t, low_res=cond)
            return out.float()

        if known is not None:
            x = known.sample(
                fn, s, cfg.diffusion, eta=eta, generator=generator, device=device, size=side
            )
        else:
            x = ddim_sample(
                fn,
                s,
                (low_res.shape[0], 3, side, side),
                prediction=cfg.diffusion.prediction,
                variance=cfg.diffusion.variance,
                eta=eta,
                clip_x0=cfg.diffusion.clip_x0,
                generator=generator,
                device=device,
                progress=progress,
            )
    return ((x.float() + 1) / 2).clamp(0, 1)


@dataclasses.dataclass(frozen=True)
class Known:
    """What inpainting keeps: ``image`` (B, 3, H, W) in [0, 1] and ``mask`` (B, 1, H, W),
    1 = generate, 0 = keep, with the batch of the samples and at any size (resized to each
    stage's: the image with antialiasing, the mask so that a pixel is generated when any of
    its area is); ``resample`` / ``jump``: RePaint's resampling
    (:func:`~tessera.diffusion.repaint_sample`)."""

    image: torch.Tensor
    mask: torch.Tensor
    resample: int = 1
    jump: int = 1

    def at(self, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(image, mask) at ``size`` x ``size``."""
        image, mask = self.image.float(), self.mask.float()
        if image.shape[-1] != size or image.shape[-2] != size:
            image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True)
            mask = (F.interpolate(mask, size=(size, size), mode="area") > 0).float()
        return image.clamp(0, 1), mask

    def sample(
        self,
        fn: ModelFn,
        s: Schedule,
        d: DiffusionConfig,
        *,
        eta: float,
        generator: torch.Generator | None,
        device: torch.device,
        size: int,
    ) -> torch.Tensor:
        image, mask = self.at(size)
        return repaint_sample(
            fn,
            s,
            image.to(device) * 2 - 1,  # (B, 3, size, size) in the diffusion's [-1, 1]
            mask.to(device),
            prediction=d.prediction,
            variance=d.variance,
            eta=eta,
            clip_x0=d.clip_x0,
            resample=self.resample,
            jump=self.jump,
            generator=generator,
        )

"""unCLIP's image manipulations (Ramesh et al. 2022 §3): an image is represented by its
bipartite latent (z_i, x_T) -- the CLIP image embedding and the DDIM inversion of the image
under the decoder conditioned on z_i. "Decoding with η = 0 reproduces the image."

- :func:`reconstruct`: the round trip (invert, decode with η = 0) on a bare decoder + CLIP.
- :func:`invert_images`: (z_i, x_T) of images under an unCLIP pipeline's decoder.
- :func:`variations`: "decoding with η > 0 gives variations" -- one inversion, n decodes.
- :func:`interpolate`: z_iθ = slerp(z_a, z_b, θ) with the inverted x_T's slerped too, so
  the end frames are the reconstructions of the two inputs.
- :func:`text_diff`: z_θ = slerp(z_i, z_d, θ), z_d = norm(z_t(to) − z_t(from)), x_T fixed.
- :func:`slerp`: the pure spherical interpolation they share.

Guidance. Inversion runs the decoder unguided (guidance 1), and every η = 0 decode here
(interpolation, text diffs, variations with η = 0) does too: DDIM inversion inverts the ODE it
walks, and the guided decoder is a different ODE, so a guided decode of an unguided inversion
does not return to the image (the end frames would not be the reconstructions). Not yet
measured on a trained decoder (none existed when this was written; on the random tiny decoder
the round trip is ~5 dB at any scale). Variations with η > 0 are samples -- with η = 1 most of
x_T is replaced by fresh noise within the first steps -- so they default to the pipeline's
``decoder_guidance`` like text -> image.

Captions. The paper decodes from z alone; our decoder also reads a caption. Every function
here gives the decoder the dropped-caption input (what it learnt for classifier-free
guidance) unless a caption is passed, in which case the same caption conditions inversion
and decoding alike.

Images in are (B, 3, H, W) float in [0, 1] at any size (resized, antialiased, to the
decoder's side); images out are (N, 3, S, S) in [0, 1] on the CPU at the pipeline's full
size S (after its upsamplers).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from tessera.data.images import psnr
from tessera.errors import DataError
from tessera.models.clip import CLIP
from tessera.models.decoder import Decoder
from tessera.pipelines.base import Samples, rerank
from tessera.pipelines.unclip import UnclipPipeline
from tessera.sampling.unclip import Known, decode, embed_images, invert, upsample
from tessera.text import TextTokenizer

__all__ = [
    "Reconstruction",
    "encode_captions",
    "inpaint",
    "interpolate",
    "invert_images",
    "reconstruct",
    "slerp",
    "text_diff",
    "variations",
]


@dataclasses.dataclass
class Reconstruction:
    """images: the decoder's reconstructions (B, 3, S, S) in [0, 1]; x_T: the inverted noise
    (B, 3, S, S); z_i: the CLIP image embeddings (B, D); psnr: per image, in dB, against the
    inputs at the decoder's size."""

    images: torch.Tensor
    x_T: torch.Tensor
    z_i: torch.Tensor
    psnr: list[float]


def encode_captions(
    tokenizer: TextTokenizer, captions: Sequence[str] | None
) -> torch.Tensor | None:
    """Caption ids as the decoder was trained on them (``<eos>``-ended, no dropout); None
    when there are none (the decoder then sees the dropped-caption input)."""
    if captions is None:
        return None
    return tokenizer.encode_batch(list(captions), add_eos=True).ids


def reconstruct(
    decoder: Decoder,
    clip: CLIP,
    images: torch.Tensor,
    *,
    tokenizer: TextTokenizer | None = None,
    captions: Sequence[str] | None = None,
    steps: int = 50,
    autocast: bool = False,
    progress: bool = False,
) -> Reconstruction:
    """CLIP-encode ``images`` (B, 3, H, W) in [0, 1], DDIM-invert them under the decoder
    (conditioned on z_i and, when given, the captions), then decode with η = 0."""
    if captions is not None and tokenizer is None:
        raise DataError("reconstruct: captions need the decoder's tokenizer")
    text = None if tokenizer is None else encode_captions(tokenizer, captions)
    images, z_i, x_T = _bipartite(
        decoder, clip, images, text, steps=steps, autocast=autocast, progress=progress
    )
    out = decode(
        decoder,
        z_i,
        text,
        steps=steps,
        guidance=1.0,
        eta=0.0,
        x_T=x_T,
        autocast=autocast,
        progress=progress,
    )
    return Reconstruction(images=out, x_T=x_T, z_i=z_i, psnr=psnr(out, images).tolist())


def _bipartite(
    decoder: Decoder,
    clip: CLIP,
    images: torch.Tensor,
    text: torch.Tensor | None,
    *,
    steps: int,
    autocast: bool = False,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(images at the decoder's side, z_i (B, D), x_T (B, 3, s, s)): CLIP-encode, then
    DDIM-invert under the unguided decoder -- the one path of every manipulation."""
    images = _fit(images, decoder.config.image_size)
    z_i = _image_embedding(decoder, clip, images)
    x_T = invert(
        decoder, images, z_i, text, steps=steps, guidance=1.0, autocast=autocast, progress=progress
    )
    return images, z_i, x_T


def _image_embedding(decoder: Decoder, clip: CLIP, images: torch.Tensor) -> torch.Tensor:
    """z_i (B, D) as the decoder reads it: unit norm (tessera's decoders), or CLIP's
    unnormalised projection (Karlo's, ``clip_input="raw"``), from the same resized pixels."""
    if decoder.config.clip_input != "raw":
        return embed_images(clip, images)
    size = clip.config.image_size
    x = images.to(next(clip.parameters()).device).float()
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
    with torch.no_grad(), torch.autocast(x.device.type, enabled=False):
        return clip.image_features(x).float()


def _fit(images: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, 3, size, size), bilinear with antialiasing when the size differs."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise DataError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
    if images.shape[-2:] == (size, size):
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", antialias=True).clamp(
        0, 1
    )


# -- spherical interpolation -------------------------------------------------------------------


def slerp(a: torch.Tensor, b: torch.Tensor, theta: float | torch.Tensor) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985) from ``a`` (θ = 0) to ``b`` (θ = 1).

    a, b: one vector (D,) or a batch (B, ...) whose examples are flattened to vectors (CLIP
      embeddings (B, D); x_T's (B, 3, S, S)); ``a`` and ``b`` broadcast against each other.
    theta: a float or a tensor of B values (a batch of 1 broadcasts over them: one pair, many
      θ); any real value (outside [0, 1] it extrapolates along the same great circle).
    Returns ``sin((1−θ)Ω)/sin Ω · a + sin(θΩ)/sin Ω · b``, Ω the angle between a and b, in the
    dtype of ``a`` and ``b``: unit vectors stay unit; vectors of other norms follow the usual
    unnormalised slerp (used on Gaussian x_T's). θ = 0 and θ = 1 give ``a`` and ``b``
    exactly. Parallel vectors (Ω ≈ 0) fall back to the linear interpolation; antiparallel
    ones (Ω ≈ π: no unique great circle) turn through a fixed direction orthogonal to ``a``,
    with the norm interpolated linearly, so the result is always finite.
    """
    if not (a.is_floating_point() and b.is_floating_point()):
        raise TypeError("slerp needs floating-point tensors")
    one = a.ndim == 1 and b.ndim == 1
    a2, b2 = (a[None], b[None]) if one else (a, b)
    a2, b2 = torch.broadcast_tensors(a2, b2)  # type: ignore[no-untyped-call]  # untyped in torch
    dtype = torch.promote_types(a.dtype, b.dtype)
    th = torch.as_tensor(theta, dtype=torch.float64, device=a2.device).reshape(-1)
    n = max(a2.shape[0], th.numel())
    if a2.shape[0] not in (1, n) or th.numel() not in (1, n):
        raise ValueError(f"theta of {th.numel()} values for a batch of {a2.shape[0]}")
    shape = (n, *a2.shape[1:])
    x = a2.reshape(a2.shape[0], -1).double().expand(n, -1)  # (B, D)
    y = b2.reshape(b2.shape[0], -1).double().expand(n, -1)
    th = th.expand(n)[:, None]  # (B, 1)

    nx, ny = x.norm(dim=1, keepdim=True), y.norm(dim=1, keepdim=True)  # (B, 1)
    ux, uy = x / nx.clamp_min(1e-300), y / ny.clamp_min(1e-300)
    cos = (ux * uy).sum(1, keepdim=True).clamp(-1, 1)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    tiny = sin < 1e-7  # parallel or antiparallel: the formula divides by ~0
    safe = torch.where(tiny, torch.ones_like(sin), sin)
    out = (torch.sin((1 - th) * omega) * x + torch.sin(th * omega) * y) / safe
    lerp = (1 - th) * x + th * y
    # antiparallel: rotate by θπ through e_k made orthogonal to a (k: a's smallest entry)
    k = ux.abs().argmin(dim=1, keepdim=True)
    e = torch.zeros_like(ux).scatter_(1, k, 1.0)
    p = e - (e * ux).sum(1, keepdim=True) * ux
    p = p / p.norm(dim=1, keepdim=True).clamp_min(1e-300)
    turn = ((1 - th) * nx + th * ny) * (torch.cos(th * math.pi) * ux + torch.sin(th * math.pi) * p)
    out = torch.where(tiny, torch.where(cos > 0, lerp, turn), out)
    out = torch.where(th == 0, x, torch.where(th == 1, y, out))  # exact ends
    out = out.reshape(shape).to(dtype)
    return out[0] if one and n == 1 else out


# -- the manipulations on an unCLIP pipeline ---------------------------------------------------


def _text(pipe: UnclipPipeline, caption: str | None, n: int) -> torch.Tensor | None:
    if caption is None:
        return None
    pipe.check_caption_lengths([caption])
    return encode_captions(pipe.tokenizer, [caption] * n)


def _one(image: torch.Tensor, name: str = "image") -> torch.Tensor:
    """(3, H, W) or (1, 3, H, W) -> (1, 3, H, W)."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[0] != 1 or image.shape[1] != 3:
        raise DataError(f"{name}: expected one (3, H, W) image, got {tuple(image.shape)}")
    return image


def _steps(pipe: UnclipPipeline, steps: int | None) -> int:
    steps = pipe.settings.decoder_steps if steps is None else int(steps)
    if steps < 2:
        raise DataError(f"steps must be >= 2, got {steps}")
    return steps


def _upsample_shared(pipe: UnclipPipeline, images: torch.Tensor, seed: int) -> torch.Tensor:
    """Every frame through the upsamplers from the same noise (a generator seeded ``seed``
    per frame), so neighbouring frames differ only where the decoder's outputs do."""
    if not pipe.upsamplers:
        return images.cpu()
    out = []
    for img in images:
        gen = torch.Generator(device=pipe.device).manual_seed(seed)
        out.append(pipe.upsample(img[None], generator=gen).cpu())
    return torch.cat(out)


@torch.no_grad()
def invert_images(
    pipe: UnclipPipeline,
    images: torch.Tensor,
    captions: Sequence[str] | None = None,
    *,
    steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The bipartite latents of ``images`` (B, 3, H, W) in [0, 1]: (z_i (B, D) unit CLIP
    image embeddings, x_T (B, 3, s, s) at the decoder's side s) -- CLIP-encoded, then
    DDIM-inverted in ``steps`` steps (default: the pipeline's ``decoder_steps``) under the
    unguided decoder conditioned on z_i (and ``captions``, one per image, if given)."""
    if captions is not None:
        captions = list(captions)
        if len(captions) != images.shape[0]:
            raise DataError(f"{len(captions)} captions for {images.shape[0]} images")
        pipe.check_caption_lengths(captions)
    text = encode_captions(pipe.tokenizer, captions)
    _, z_i, x_T = _bipartite(pipe.decoder, pipe.clip, images, text, steps=_steps(pipe, steps))
    return z_i, x_T


def _decode(
    pipe: UnclipPipeline,
    z_i: torch.Tensor,
    x_T: torch.Tensor,
    text: torch.Tensor | None,
    *,
    steps: int,
    guidance: float = 1.0,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(z_i, x_T) -> images at the decoder's side (B, 3, s, s), DDIM with ``eta``."""
    return decode(
        pipe.decoder,
        z_i,
        text,
        steps=steps,
        guidance=guidance,
        eta=eta,
        generator=generator,
        x_T=x_T,
    )


@torch.no_grad()
def variations(
    pipe: UnclipPipeline,
    image: torch.Tensor,
    *,
    n: int = 8,
    eta: float = 1.0,
    steps: int | None = None,
    guidance: float | None = None,
    generator: torch.Generator | None = None,
    caption: str | None = None,
) -> torch.Tensor:
    """``n`` variations of one image (3, H, W) or (1, 3, H, W) in [0, 1] -> (n, 3, S, S).

    The image is inverted once to (z_i, x_T); the decoder then runs ``n`` times from that same
    x_T with DDIM ``eta`` in (0, 1] ("decoding with η > 0 gives variations"; η = 0 gives n
    copies of the reconstruction), every fresh draw -- the decoder's per-step noise, then the
    upsamplers' -- from ``generator`` (on the pipeline's device). guidance: the decoder's
    (default: the pipeline's ``decoder_guidance`` for η > 0, 1 for η = 0 -- the module notes
    say why). steps: DDIM steps of inversion and decoding (default: ``decoder_steps``).
    diffusers' and karlo's variations decode from fresh noise; we keep the inverted x_T.
    """
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    if not 0 <= eta <= 1:
        raise DataError(f"eta must be in [0, 1], got {eta}")
    steps = _steps(pipe, steps)
    if guidance is None:
        guidance = pipe.settings.decoder_guidance if eta > 0 else 1.0
    text = _text(pipe, caption, 1)
    _, z_i, x_T = _bipartite(pipe.decoder, pipe.clip, _one(image), text, steps=steps)
    low = _decode(
        pipe,
        z_i.repeat(n, 1),
        x_T.repeat(n, 1, 1, 1),
        None if text is None else text.repeat(n, 1),
        steps=steps,
        guidance=guidance,
        eta=eta,
        generator=generator,
    )
    return pipe.upsample(low, generator=generator).cpu()


def _thetas(frames: int, end: float) -> torch.Tensor:
    if frames < 2:
        raise DataError(f"frames must be >= 2, got {frames}")
    return torch.linspace(0, end, frames, dtype=torch.float64)


@torch.no_grad()
def interpolate(
    pipe: UnclipPipeline,
    image_a: torch.Tensor,
    image_b: torch.Tensor,
    *,
    frames: int = 8,
    steps: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """``frames`` images from ``image_a`` to ``image_b`` (each (3, H, W) in [0, 1]) ->
    (frames, 3, S, S): for θ in linspace(0, 1, frames), z_iθ = slerp(z_a, z_b, θ) and
    x_Tθ = slerp(x_Ta, x_Tb, θ) (the inverted noises, flattened per image) decoded with η = 0
    unguided, so the first and last frames are the reconstructions of the inputs. seed: the
    upsamplers' noise, the same for every frame."""
    steps = _steps(pipe, steps)
    theta = _thetas(frames, 1.0)
    side = pipe.decoder.config.image_size
    both = torch.cat(
        [
            _fit(_one(im, name), side).float().cpu()
            for im, name in ((image_a, "image_a"), (image_b, "image_b"))
        ]
    )
    _, z_i, x_T = _bipartite(pipe.decoder, pipe.clip, both, None, steps=steps)
    z = slerp(z_i[:1], z_i[1:], theta)  # (frames, D): the pair broadcasts over the thetas
    x = slerp(x_T[:1], x_T[1:], theta)  # (frames, 3, s, s)
    return _upsample_shared(pipe, _decode(pipe, z, x, None, steps=steps), seed)


@torch.no_grad()
def text_diff(
    pipe: UnclipPipeline,
    image: torch.Tensor,
    from_caption: str,
    to_caption: str,
    *,
    frames: int = 5,
    max_theta: float = 0.5,
    steps: int | None = None,
    caption: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Edit one image (3, H, W) in [0, 1] towards a caption -> (frames, 3, S, S).

    z_d = normalise(z_t(to_caption) − z_t(from_caption)) (CLIP text embeddings; the paper's
    baseline caption may be "" or e.g. "a photo"), z_θ = slerp(z_i, z_d, θ) for θ in
    linspace(0, max_theta, frames) (paper: up to 0.25-0.5), decoded with η = 0 unguided from
    the image's inverted x_T, so the θ = 0 frame is its reconstruction. caption: what the
    decoder reads while inverting and decoding (default none: the paper decodes from z_θ
    alone; passing ``to_caption`` pushes every frame, θ = 0 too, towards it). seed: the
    upsamplers' noise, the same for every frame.
    """
    if not 0 < max_theta <= 1:
        raise DataError(f"max_theta must be in (0, 1], got {max_theta}")
    steps = _steps(pipe, steps)
    theta = _thetas(frames, max_theta)
    pipe.check_caption_lengths([from_caption, to_caption])
    _, z_t = pipe.encode_text([from_caption, to_caption])  # (2, D)
    diff = z_t[1] - z_t[0]
    if float(diff.norm()) < 1e-6 * float(z_t.norm(dim=1).max()):
        raise DataError(
            f"{from_caption!r} and {to_caption!r} have the same CLIP text embedding: no direction"
        )
    z_d = diff / diff.norm()
    text = _text(pipe, caption, 1)
    _, z_i, x_T = _bipartite(pipe.decoder, pipe.clip, _one(image), text, steps=steps)
    if pipe.decoder.config.clip_input == "raw":  # Karlo: the path keeps z_i's norm
        z_d = z_d.to(z_i) * z_i.norm(dim=-1)
    z = slerp(z_i, z_d.to(z_i)[None], theta)  # (frames, D)
    x = x_T.repeat(frames, 1, 1, 1)
    low = _decode(pipe, z, x, None if text is None else text.repeat(frames, 1), steps=steps)
    return _upsample_shared(pipe, low, seed)


# -- inpainting --------------------------------------------------------------------------------


def _binary_mask(mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """(H, W), (1, H, W) or (1, 1, H, W) in [0, 1] of the image's size -> (1, 1, H, W) of 0/1:
    grey values are thresholded at 0.5 (1 = repaint). One-line errors for another size or
    an empty mask; a full mask is allowed (text to image in the image's place)."""
    m = mask.detach().float().cpu()
    while m.ndim < 4:
        m = m[None]
    if m.ndim != 4 or m.shape[:2] != (1, 1) or m.shape[-2:] != image.shape[-2:]:
        want = tuple(image.shape[-2:])
        raise DataError(
            f"the mask must be one plane of the image's size {want}, got {tuple(mask.shape)}"
        )
    m = (m > 0.5).float()
    if not m.any():
        raise DataError("the mask is empty: nothing to repaint (white marks what to repaint)")
    return m


@torch.no_grad()
def inpaint(
    pipe: UnclipPipeline,
    image: torch.Tensor,
    mask: torch.Tensor,
    prompt: str,
    *,
    n: int = 4,
    seed: int = 0,
    steps: int | None = None,
    resample: int = 1,
    jump: int = 1,
    eta: float = 1.0,
) -> Samples:
    """Repaint the masked region of one image so that it matches ``prompt``, keeping the rest
    (no retraining: RePaint with the unCLIP decoder, then every upsampler).

    image: (3, H, W) or (1, 3, H, W) in [0, 1], fitted to the pipeline's size like the other
      manipulations. mask: (H, W), (1, H, W) or (1, 1, H, W) of the image's size, 1 (white) =
      repaint, 0 = keep; grey values are thresholded at 0.5; an empty mask is an error; a
      full mask gives text to image.
    The prompt's image embedding comes from the prior, as in ``generate``. At every stage (the
    decoder's side, then each upsampler's) the known pixels are replaced by their forward-
    noised original after each step (``resample`` / ``jump``: RePaint's resampling; ``eta``
    the DDIM noise, 1 = DDPM's); the result is composited so that pixels outside the mask are
    the input's, exactly, at the output size. Returns ``n`` samples reranked by CLIP, best
    first; every draw from one generator seeded with ``seed``.
    """
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    image = _one(image)
    m = _binary_mask(mask, image)
    pipe.check_caption_lengths([prompt])
    s = pipe.settings
    steps = _steps(pipe, steps)
    full = pipe.image_size
    known_image = _fit(image, full).cpu()  # (1, 3, S, S)
    known_mask = (F.interpolate(m, size=(full, full), mode="area") > 0).float()  # (1, 1, S, S)
    known = Known(
        known_image.expand(n, -1, -1, -1),
        known_mask.expand(n, -1, -1, -1),
        resample=resample,
        jump=jump,
    )
    gen = torch.Generator(device=pipe.device).manual_seed(seed)
    prompts = [prompt] * n
    z_i = pipe.image_embeddings(prompts, generator=gen)
    text = encode_captions(pipe.tokenizer, prompts)
    images = decode(
        pipe.decoder,
        z_i,
        text,
        steps=steps,
        guidance=s.decoder_guidance,
        eta=eta,
        generator=gen,
        known=known,
    )
    for up in pipe.upsamplers:
        images = upsample(up, images, steps=s.upsampler_steps, eta=eta, generator=gen, known=known)
    images = known_mask * images.cpu() + (1 - known_mask) * known_image  # the kept pixels, exact
    out = Samples(images, prompts, [0] * n)
    return rerank(out, pipe.reranker, n) if n > 1 else out

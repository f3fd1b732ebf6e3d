"""unCLIP's image manipulations behind the server's routes, without HTTP: decode the mask of an
inpainting request, run :func:`~tessera.pipelines.manipulations.variations`,
:func:`~tessera.pipelines.manipulations.interpolate`,
:func:`~tessera.pipelines.manipulations.text_diff` or
:func:`~tessera.pipelines.manipulations.inpaint` on the model's worker thread, and shape the
answer as :func:`~tessera.apps.serve.service.run_generation` does (``images``: base64 PNGs,
each with a ``label``), plus ``inputs``: what the model was given (the uploads as it saw them,
the mask), shown before the results, and ``layout``: ``grid`` or ``strip`` (frames in order).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import math
import time
from collections.abc import Iterator
from typing import Any

from tessera.apps.serve.config import ServeConfig
from tessera.apps.serve.service import Params, RequestError, jsonable, load_upload
from tessera.errors import ConfigError, DataError

__all__ = [
    "EMPTY_MASK",
    "decode_image_and_mask",
    "run_inpainting",
    "run_interpolation",
    "run_text_diff",
    "run_variations",
]

EMPTY_MASK = (
    "the mask is empty: nothing to repaint (paint white over what to redraw, inside the "
    "centred square the model sees)"
)


def decode_image_and_mask(
    image: bytes, mask: bytes, config: ServeConfig, size: int
) -> tuple[Any, Any]:
    """An inpainting request's uploads -> (image (1, 3, size, size) in [0, 1], mask
    (1, 1, size, size) of exact 0/1, 1 = repaint).

    The mask may come at any resolution (the page sends it at the image's displayed size): it
    is resized, nearest, onto the image, then both are resized (shorter side) and centre-
    cropped alike, the mask nearest again, and thresholded at half grey. Bad uploads are 400s
    (``bad image`` / ``bad mask``); a mask with nothing to repaint is a 422."""
    from PIL import Image

    from tessera.data.transforms import center_crop, resize_shorter, to_tensor

    img = resize_shorter(load_upload(image, config, "image"), size)
    m = load_upload(mask, config, "mask").convert("L")
    m = m.resize(img.size, Image.Resampling.NEAREST)  # (W, H) of the resized image
    x = to_tensor(center_crop(img, size))[None]  # (1, 3, S, S)
    grey = to_tensor(center_crop(m, size))[:1][None]  # (1, 1, S, S)
    binary = (grey > 0.5).float()
    if not bool(binary.any()):
        raise RequestError(422, EMPTY_MASK)
    return x, binary


# -- running a manipulation (on the model's worker thread) -----------------------------------


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """The library's one-line user errors (a caption too long, an empty mask) as 422s."""
    try:
        yield
    except (DataError, ConfigError, ValueError) as e:
        raise RequestError(422, str(e).splitlines()[0]) from None


def _with_settings(pipe: Any, settings: Any) -> Any:
    """``pipe`` sampling with the request's ``settings`` (a shallow copy sharing the networks;
    the loaded pipeline itself never changes)."""
    if settings is None or settings == pipe.settings:
        return pipe
    view = copy.copy(pipe)
    view.settings = settings
    return view


def _generator(pipe: Any, seed: int) -> Any:
    import torch

    return torch.Generator(device=pipe.device).manual_seed(seed)


def _entry(image: Any, label: str, score: float | None = None) -> dict[str, Any]:
    """One (3, H, W) image in [0, 1] -> {png (base64), width, height, label, ...}."""
    from tessera.data.images import png_bytes, to_uint8

    px = to_uint8(image[None] if image.ndim == 3 else image)[0]
    return {
        "png": base64.b64encode(png_bytes(px)).decode("ascii"),
        "width": int(px.shape[1]),
        "height": int(px.shape[0]),
        "label": label,
        "score": score,
        "checker": None,
    }


# the model's own settings each manipulation reads (the rest, e.g. the decoder's sampler and
# eta, are fixed by the method: DDIM, with the eta given in the answer)
_USED = {
    "variations": ("decoder_steps", "decoder_guidance", "upsampler_steps"),
    "interpolation": ("decoder_steps", "upsampler_steps"),
    "text_diff": ("decoder_steps", "upsampler_steps"),
    "inpainting": (
        "prior_kind", "prior_steps", "prior_guidance", "prior_candidates", "decoder_steps",
        "decoder_guidance", "upsampler_steps",
    ),
}  # fmt: skip


def _answer(
    kind: str,
    p: Params,
    seconds: float,
    images: list[dict[str, Any]],
    inputs: list[dict[str, Any]],
    layout: str,
    **extra: Any,
) -> dict[str, Any]:
    s = dataclasses.asdict(p.settings)
    return {
        "kind": kind,
        "model": p.model,
        "prompt": p.prompt,
        "n": p.n,
        "seed": p.seed,
        "steps": s["decoder_steps"],
        "settings": jsonable({k: s[k] for k in _USED[kind] if k in s}),
        "seconds": round(seconds, 3),
        "warnings": list(p.warnings),
        "layout": layout,
        "inputs": inputs,
        "images": images,
        **extra,
    }


def run_variations(pipe: Any, p: Params, image: Any) -> dict[str, Any]:
    """``p.n`` variations of ``image`` (1, 3, S, S): inverted once, decoded with η = 1 at the
    request's ``decoder_guidance`` and ``decoder_steps``; every draw seeded by ``p.seed``."""
    from tessera.pipelines.manipulations import variations

    s = p.settings
    t0 = time.perf_counter()
    with _refused():
        out = variations(
            _with_settings(pipe, s), image, n=p.n, steps=s.decoder_steps,
            guidance=s.decoder_guidance, generator=_generator(pipe, p.seed),
        )  # fmt: skip
    images = [_entry(img, f"#{i + 1}") for i, img in enumerate(out)]
    return _answer(
        "variations", p, time.perf_counter() - t0, images, [_entry(image[0], "given: image")],
        "grid", guidance=s.decoder_guidance, eta=1.0,
    )  # fmt: skip


def _thetas(frames: int, end: float) -> list[float]:
    import torch

    return torch.linspace(0, end, frames, dtype=torch.float64).tolist()


def run_interpolation(pipe: Any, p: Params, image_a: Any, image_b: Any) -> dict[str, Any]:
    """``p.n`` frames from ``image_a`` to ``image_b`` (each (1, 3, S, S)): slerp of both
    latents, decoded with η = 0 unguided (the end frames reconstruct the inputs)."""
    from tessera.pipelines.manipulations import interpolate

    s = p.settings
    t0 = time.perf_counter()
    with _refused():
        out = interpolate(
            _with_settings(pipe, s), image_a, image_b, frames=p.n, steps=s.decoder_steps,
            seed=p.seed,
        )  # fmt: skip
    thetas = _thetas(p.n, 1.0)
    images = [_entry(img, f"θ={t:.2f}") for img, t in zip(out, thetas, strict=True)]
    inputs = [_entry(image_a[0], "given: A"), _entry(image_b[0], "given: B")]
    return _answer(
        "interpolation", p, time.perf_counter() - t0, images, inputs, "strip",
        frames=p.n, thetas=thetas, guidance=1.0, eta=0.0,
    )  # fmt: skip


def run_text_diff(
    pipe: Any, p: Params, image: Any, from_caption: str, max_theta: float
) -> dict[str, Any]:
    """``p.n`` frames editing ``image`` (1, 3, S, S) from ``from_caption`` towards
    ``p.prompt`` (the *to* caption), θ from 0 to ``max_theta`` (θ = 0 reconstructs it)."""
    from tessera.pipelines.manipulations import text_diff

    s = p.settings
    t0 = time.perf_counter()
    with _refused():
        out = text_diff(
            _with_settings(pipe, s), image, from_caption, p.prompt, frames=p.n,
            max_theta=max_theta, steps=s.decoder_steps, seed=p.seed,
        )  # fmt: skip
    thetas = _thetas(p.n, max_theta)
    images = [_entry(img, f"θ={t:.2f}") for img, t in zip(out, thetas, strict=True)]
    return _answer(
        "text_diff", p, time.perf_counter() - t0, images, [_entry(image[0], "given: image")],
        "strip", from_caption=from_caption, to_caption=p.prompt, max_theta=max_theta,
        frames=p.n, thetas=thetas, guidance=1.0, eta=0.0,
    )  # fmt: skip


def run_inpainting(
    pipe: Any, p: Params, image: Any, mask: Any, *, resample: int, jump: int
) -> dict[str, Any]:
    """``p.n`` repaintings of ``mask``'s white region of ``image`` drawn from ``p.prompt``
    (RePaint with the unCLIP decoder), best CLIP score first; pixels outside the mask are
    the input's."""
    from tessera.pipelines.manipulations import inpaint

    s = p.settings
    t0 = time.perf_counter()
    with _refused():
        out = inpaint(
            _with_settings(pipe, s), image, mask, p.prompt, n=p.n, seed=p.seed,
            steps=s.decoder_steps, resample=resample, jump=jump,
        )  # fmt: skip
    scores = [None] * p.n if out.scores is None else [float(v) for v in out.scores]
    images = [
        _entry(img, f"#{i + 1}", round(v, 4) if v is not None and math.isfinite(v) else None)
        for i, (img, v) in enumerate(zip(out.images, scores, strict=True))
    ]
    inputs = [_entry(image[0], "given: image"), _entry(mask[0].expand(3, -1, -1), "given: mask")]
    return _answer(
        "inpainting", p, time.perf_counter() - t0, images, inputs, "grid",
        guidance=s.decoder_guidance, resample=resample, jump=jump,
    )  # fmt: skip

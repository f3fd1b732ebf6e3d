"""Samplers as free functions of ``(model_fn, schedule, shape, ...)``: one loop shared by the
prior, the decoder and the upsamplers (ancestral DDPM, DDIM, DDIM inversion) and the
classifier-free-guidance wrapper.

``model_fn(x_t, t_model)`` gets x_t (B, ...) and ``t_model`` (B,) long: the *original*
training step ``s.timesteps[i]`` of schedule index i (so a respaced schedule feeds the network
the steps it was trained on). It returns the raw output: prediction channels, plus variance
channels with ``learned_range``. Every random draw goes through :func:`randn` with a
generator on the device of the tensor it fills.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TypeVar

import torch

from tessera.diffusion.process import _x0_eps, p_mean_variance, split_output
from tessera.diffusion.schedules import Schedule

__all__ = [
    "ModelFn",
    "classifier_free_guidance",
    "ddim_invert",
    "ddim_reverse_step",
    "ddim_sample",
    "ddim_step",
    "ddpm_sample",
    "ddpm_step",
    "randn",
    "repaint_levels",
    "repaint_sample",
]

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
T = TypeVar("T")


def randn(
    shape: Sequence[int],
    *,
    generator: torch.Generator | None,
    device: torch.device | str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Standard normal draws of ``shape`` on ``device``; the generator must live on that
    device's type (a CPU generator filling a CUDA tensor would silently sync and differ)."""
    dev = torch.device(device)
    if generator is not None and generator.device.type != dev.type:
        raise ValueError(
            f"generator on {generator.device.type} cannot draw into {dev.type} tensors; "
            f"create it with torch.Generator(device={dev.type!r})"
        )
    return torch.randn(tuple(shape), generator=generator, device=dev, dtype=dtype)


def _index(i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)


def _model_t(s: Schedule, i: int, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), int(s.timesteps[i]), dtype=torch.long, device=x.device)


def _progress(items: Sequence[T], progress: bool, desc: str) -> Iterable[T]:
    if not progress:
        return items
    from tqdm.auto import tqdm

    bar: Iterable[T] = tqdm(items, desc=desc, leave=False)
    return bar


# -- ancestral sampling (DDPM) -----------------------------------------------------------------


def ddpm_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    i: int,
    s: Schedule,
    *,
    prediction: str,
    variance: str,
    clip_x0: float,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """x_{i−1} = μ_θ(x_i, i) + σ_i z (DDPM algorithm 2; z = ``noise``, unused at i = 0)."""
    t = _index(i, x_t)
    p = p_mean_variance(
        s, model_output, x_t, t, prediction=prediction, variance=variance, clip_x0=clip_x0
    )
    if i == 0:
        return p["mean"]
    if noise is None:
        raise ValueError(f"ddpm_step needs noise at step {i} > 0")
    return p["mean"] + torch.exp(0.5 * p["log_variance"]) * noise


@torch.no_grad()
def ddpm_sample(
    model_fn: ModelFn,
    s: Schedule,
    shape: Sequence[int],
    *,
    prediction: str,
    variance: str,
    clip_x0: float = 1.0,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> torch.Tensor:
    """Ancestral sampling from x_T ~ N(0, I) (or ``x_T``) down to x0: (shape) tensor."""
    x = x_T if x_T is not None else randn(shape, generator=generator, device=device, dtype=dtype)
    for i in _progress(range(s.num_steps - 1, -1, -1), progress, "ddpm"):
        out = model_fn(x, _model_t(s, i, x))
        noise = (
            randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) if i > 0 else None
        )
        x = ddpm_step(
            out,
            x,
            i,
            s,
            prediction=prediction,
            variance=variance,
            clip_x0=clip_x0,
            noise=noise,
        )
    return x


# -- DDIM ----------------------------------------------------------------------------------------


def ddim_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    i: int,
    s: Schedule,
    *,
    prediction: str,
    eta: float = 0.0,
    clip_x0: float = 1.0,
    noise: torch.Tensor | None = None,
    variance: str = "fixed_small",
) -> torch.Tensor:
    """One DDIM step from index i to i−1 (Song et al. 2021, eq. 12):

    x_{t−1} = √ᾱ_{t−1} x̂0 + √(1 − ᾱ_{t−1} − σ_t²) ε̂ + σ_t z,
    σ_t(η) = η √((1 − ᾱ_{t−1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t−1})  (eq. 16),

    with (x̂0, ε̂) from the prediction (x̂0 clamped when clip_x0 > 0, ε̂ recomputed from it).
    Learned variance channels are ignored. η = 0 is deterministic; η = 1 is DDPM's β̃ noise.
    """
    pred, _ = split_output(model_output, variance)
    x0, eps = _x0_eps(s, pred, x_t, _index(i, x_t), prediction, clip_x0)
    abar = float(s.alphas_cumprod[i])  # float64 scalars
    abar_prev = float(s.alphas_cumprod_prev[i])
    sigma = eta * math.sqrt((1.0 - abar_prev) / (1.0 - abar)) * math.sqrt(1.0 - abar / abar_prev)
    dir_coef = math.sqrt(max(1.0 - abar_prev - sigma**2, 0.0))
    x_prev = math.sqrt(abar_prev) * x0 + dir_coef * eps
    if sigma > 0:
        if noise is None:
            raise ValueError(f"ddim_step with eta > 0 needs noise at step {i}")
        x_prev = x_prev + sigma * noise
    return x_prev


@torch.no_grad()
def ddim_sample(
    model_fn: ModelFn,
    s: Schedule,
    shape: Sequence[int],
    *,
    prediction: str,
    variance: str = "fixed_small",
    eta: float = 0.0,
    clip_x0: float = 1.0,
    generator: torch.Generator | None = None,
    x_T: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM sampling from x_T (drawn, or given e.g. by :func:`ddim_invert`) to x0. With η = 0
    no noise is drawn after x_T; with η > 0 one draw per step i > 0."""
    x = x_T if x_T is not None else randn(shape, generator=generator, device=device, dtype=dtype)
    for i in _progress(range(s.num_steps - 1, -1, -1), progress, "ddim"):
        out = model_fn(x, _model_t(s, i, x))
        noise = None
        if eta > 0 and i > 0:
            noise = randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = ddim_step(
            out,
            x,
            i,
            s,
            prediction=prediction,
            eta=eta,
            clip_x0=clip_x0,
            noise=noise,
            variance=variance,
        )
    return x


def ddim_reverse_step(
    model_output: torch.Tensor,
    x_t: torch.Tensor,
    i: int,
    s: Schedule,
    *,
    prediction: str,
    clip_x0: float = 0.0,
    variance: str = "fixed_small",
) -> torch.Tensor:
    """The η = 0 DDIM ODE run forward in noise, index i → i+1:
    x_{t+1} = √ᾱ_{t+1} x̂0 + √(1 − ᾱ_{t+1}) ε̂ with (x̂0, ε̂) from the output at (x_t, t)."""
    pred, _ = split_output(model_output, variance)
    x0, eps = _x0_eps(s, pred, x_t, _index(i, x_t), prediction, clip_x0)
    abar_next = float(s.alphas_cumprod_next[i])
    return math.sqrt(abar_next) * x0 + math.sqrt(1.0 - abar_next) * eps


@torch.no_grad()
def ddim_invert(
    model_fn: ModelFn,
    s: Schedule,
    x0: torch.Tensor,
    *,
    prediction: str,
    variance: str = "fixed_small",
    clip_x0: float = 0.0,
    progress: bool = False,
) -> torch.Tensor:
    """DDIM inversion (unCLIP's image variations encode x_T this way): clean x0 → x at the
    noisiest index N−1, the level :func:`ddim_sample` starts from; then
    ``ddim_sample(..., eta=0, x_T=ddim_invert(...))`` regenerates x0 up to the ODE's
    discretisation error. N model calls.

    The first move goes from the clean level (ᾱ = 1, ``alphas_cumprod_prev[0]``) to index 0,
    x_0 = √ᾱ_0 x0 + √(1 − ᾱ_0) ε̂ with ε̂ read at (x0, t_0) (the exact inverse of the sampler's
    last step up to ε̂ at x0 vs at x_0); then :func:`ddim_reverse_step` for i = 0..N−2.
    """
    x = x0
    abar0 = float(s.alphas_cumprod[0])
    out = model_fn(x, _model_t(s, 0, x))
    pred, _ = split_output(out, variance)
    _, eps = _x0_eps(s, pred, x, _index(0, x), prediction, clip_x0)
    x = math.sqrt(abar0) * x0 + math.sqrt(1.0 - abar0) * eps
    for i in _progress(range(s.num_steps - 1), progress, "ddim-invert"):
        out = model_fn(x, _model_t(s, i, x))
        x = ddim_reverse_step(
            out, x, i, s, prediction=prediction, clip_x0=clip_x0, variance=variance
        )
    return x


# -- inpainting ----------------------------------------------------------------------------------


def repaint_levels(num_steps: int, resample: int = 1, jump: int = 1) -> list[int]:
    """The noise levels RePaint visits (Lugmayr et al. 2022, Alg. 1 with its jumps), from
    ``num_steps − 1`` (x_T) down to −1 (clean): a step down is a model call, a step up
    re-noises. Every ``jump`` levels (below the top) the walk goes back up ``jump`` levels,
    ``resample − 1`` times, so known and generated regions harmonise; ``resample = 1`` is the
    plain descent."""
    if resample < 1 or jump < 1:
        raise ValueError(f"resample and jump must be >= 1, got {resample} and {jump}")
    back = {lv: resample - 1 for lv in range(0, num_steps - jump, jump)}
    level = num_steps - 1
    out = [level]
    while level > -1:
        level -= 1
        out.append(level)
        if back.get(level, 0) > 0:
            back[level] -= 1
            for _ in range(jump):
                level += 1
                out.append(level)
    return out


def _abar(s: Schedule, level: int) -> float:
    """ᾱ at a level (−1: the clean data, ᾱ = 1)."""
    return 1.0 if level < 0 else float(s.alphas_cumprod[level])


@torch.no_grad()
def repaint_sample(
    model_fn: ModelFn,
    s: Schedule,
    known: torch.Tensor,
    mask: torch.Tensor,
    *,
    prediction: str,
    variance: str = "fixed_small",
    eta: float = 1.0,
    clip_x0: float = 1.0,
    resample: int = 1,
    jump: int = 1,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Inpainting without retraining (RePaint): sample x0 of ``known``'s shape where ``mask``
    is 1 and keep ``known`` where it is 0.

    After every DDIM step down to level l the known region is replaced by a fresh forward
    sample q(x_l | known) = √ᾱ_l known + √(1 − ᾱ_l) ε, so the generated region is denoised
    next to a correctly noised context (at the clean level: ``known`` itself, exactly). With
    ``resample`` > 1 the walk of :func:`repaint_levels` goes back up ``jump`` levels by
    q(x_{l+k} | x_l) and down again. known: (B, ...) in the model's data range; mask:
    broadcastable to it, 1 = generate. η > 0 (default 1: DDPM's noise) gives the generated
    region room to agree with the context; every draw comes from ``generator``.
    """
    device, dtype = known.device, known.dtype
    mask = mask.to(device=device, dtype=dtype)

    def draw() -> torch.Tensor:
        return randn(known.shape, generator=generator, device=device, dtype=dtype)

    levels = repaint_levels(s.num_steps, resample, jump)
    a = _abar(s, levels[0])
    x = mask * draw() + (1 - mask) * (math.sqrt(a) * known + math.sqrt(1 - a) * draw())
    moves = list(itertools.pairwise(levels))
    for here, there in _progress(moves, progress, "repaint"):
        if there < here:  # one model step down, then the known region at the new level
            out = model_fn(x, _model_t(s, here, x))
            noise = draw() if eta > 0 and here > 0 else None
            x = ddim_step(
                out, x, here, s, prediction=prediction, eta=eta, clip_x0=clip_x0,
                noise=noise, variance=variance,
            )  # fmt: skip
            a = _abar(s, there)
            ctx = known if there < 0 else math.sqrt(a) * known + math.sqrt(1 - a) * draw()
            x = mask * x + (1 - mask) * ctx
        else:  # re-noise one level up: q(x_there | x_here)
            ratio = _abar(s, there) / _abar(s, here)
            x = math.sqrt(ratio) * x + math.sqrt(1 - ratio) * draw()
    return x


# -- guidance ------------------------------------------------------------------------------------


def classifier_free_guidance(model_fn_pair: ModelFn, scale: float, *, channels: int) -> ModelFn:
    """Classifier-free guidance (Ho & Salimans 2021): ε̃ = ε_uncond + s·(ε_cond − ε_uncond).

    The returned ``fn(x, t)`` calls ``model_fn_pair(cat[x, x], cat[t, t])`` once; the pair
    function conditions the first half and leaves the second unconditional. The first
    ``channels`` channels (the prediction) are mixed; the remaining (variance) channels are
    the conditional half's (unCLIP guides its decoder this way, scale 1.25 for COCO FID).
    """

    def fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        out = model_fn_pair(torch.cat([x, x]), torch.cat([t, t]))
        cond, uncond = out.chunk(2, dim=0)
        mixed = uncond[:, :channels] + scale * (cond[:, :channels] - uncond[:, :channels])
        if cond.shape[1] == channels:
            return mixed
        return torch.cat([mixed, cond[:, channels:]], dim=1)

    return fn

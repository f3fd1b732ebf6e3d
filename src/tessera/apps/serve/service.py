"""What the routes do, without HTTP: load models, check a request against the limits, run a
generation or an image-prompt completion, and shape the answer (PNG base64, CLIP scores,
the shapes checker's verdict per claim)."""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from tessera.apps.serve.config import DEFAULT_MODEL, ServeConfig
from tessera.errors import ConfigError, DataError

__all__ = [
    "Params",
    "RequestError",
    "decode_image",
    "describe",
    "load_models",
    "run_generation",
]

_CLAIMS = ("count", "color_shape", "size", "position", "relation")


class RequestError(Exception):
    """A request the server refuses: ``status`` is its HTTP code, the message one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Params:
    """A checked request: what to generate, and the warnings checking it raised."""

    model: str
    prompt: str
    n: int
    candidates: int
    guidance: float | None
    seed: int
    steps: int | None = None
    warnings: tuple[str, ...] = ()


# -- models ----------------------------------------------------------------------------------


def load_models(names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``dalle`` -> the shipped pipeline; anything else -> a pipeline folder, served under the
    folder's name (made unique). Only the operator's command line names paths."""
    from tessera.apps.demo import default_pipeline_dir
    from tessera.pipelines import load_pipeline

    out: dict[str, Any] = {}
    for spec in names:
        path = default_pipeline_dir() if spec == DEFAULT_MODEL else Path(spec)
        name = DEFAULT_MODEL if spec == DEFAULT_MODEL else (path.resolve().name or "model")
        base, i = name, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out[name] = load_pipeline(path)
    return out


def describe(name: str, pipe: Any) -> dict[str, Any]:
    """What a loaded model supports, for /healthz and the page."""
    caps = sorted(getattr(pipe, "capabilities", frozenset()))
    info: dict[str, Any] = {
        "name": name,
        "kind": getattr(pipe, "kind", "unknown"),
        "image_size": int(pipe.image_size),
        "capabilities": caps,
    }
    settings = getattr(pipe, "settings", None)
    if settings is not None and hasattr(settings, "guidance"):
        info["default_guidance"] = float(settings.guidance)
    grid = _grid_rows(pipe)
    if "image_prompt" in caps and grid:
        info["image_prompt_rows"] = grid
    return info


def _grid_rows(pipe: Any) -> int | None:
    config = getattr(getattr(pipe, "model", None), "config", None)
    grid = getattr(config, "grid_size", None)
    return int(grid) if grid else None


# -- checking a request ----------------------------------------------------------------------


def check_params(
    config: ServeConfig,
    models: dict[str, Any],
    *,
    model: str | None,
    prompt: str,
    n: int,
    candidates: int | None,
    guidance: float | None,
    seed: int | None,
    steps: int | None,
) -> Params:
    """Check a request against the limits and the model's capabilities (RequestError: 422,
    or 404 for an unknown model); an overlong prompt is cut with a warning."""
    name = model or next(iter(models))
    if name not in models:
        raise RequestError(404, f"unknown model {name!r}; loaded: {', '.join(models)}")
    caps = models[name].capabilities
    warnings: list[str] = []
    text = " ".join(prompt.split())
    if not text:
        raise RequestError(422, "prompt must not be empty")
    if len(text) > config.max_prompt_chars:
        warnings.append(f"prompt cut to {config.max_prompt_chars} characters (it had {len(text)})")
        text = text[: config.max_prompt_chars].rstrip()
    if not 1 <= n <= config.max_n:
        raise RequestError(422, f"n must be between 1 and {config.max_n}, got {n}")
    drawn = n if candidates is None else candidates
    if not n <= drawn <= config.max_candidates:
        raise RequestError(
            422, f"candidates must be between n = {n} and {config.max_candidates}, got {drawn}"
        )
    if drawn > n and "rerank" not in caps:
        raise RequestError(422, f"model {name!r} cannot rerank: candidates must equal n")
    if guidance is not None:
        if "guidance" not in caps:
            raise RequestError(422, f"model {name!r} does not take guidance")
        if not 0 <= guidance <= 50:
            raise RequestError(422, f"guidance must be between 0 and 50, got {guidance}")
    if steps is not None:
        if not 1 <= steps <= config.max_steps:
            raise RequestError(422, f"steps must be between 1 and {config.max_steps}, got {steps}")
        if "steps" not in caps:
            raise RequestError(422, f"model {name!r} does not take steps")
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    elif not 0 <= seed < 2**32:
        raise RequestError(422, f"seed must be between 0 and {2**32 - 1}, got {seed}")
    return Params(name, text, n, drawn, guidance, seed, steps, tuple(warnings))


def decode_image(data: bytes, config: ServeConfig, size: int) -> Any:
    """Uploaded bytes -> (1, 3, size, size) float in [0, 1] (shorter side resized, centre
    crop); anything but an allowlisted image under the pixel cap is a RequestError 400."""
    from tessera.config.data import DataConfig
    from tessera.data.image_io import load_image
    from tessera.data.transforms import center_crop, resize_shorter, to_tensor

    if not data:
        raise RequestError(400, "the uploaded image is empty")
    limits = DataConfig(
        image_formats=config.image_formats, max_image_pixels=config.max_image_pixels
    )
    try:
        img = load_image(bytes(data), limits)
    except DataError as e:
        raise RequestError(400, f"bad image: {_strip_name(str(e))}") from None
    except (OSError, ValueError, SyntaxError) as e:  # a decoder's own complaint
        raise RequestError(400, f"bad image: {e}") from None
    return to_tensor(center_crop(resize_shorter(img, size), size)).unsqueeze(0)


def _strip_name(message: str) -> str:
    # load_image prefixes the source name; for bytes it is a placeholder, not user-facing
    head, sep, rest = message.partition(": ")
    return rest if sep and head.startswith("<") else message


# -- generating ------------------------------------------------------------------------------


class _ThreadWarnings(logging.Handler):
    """Collects ``tessera.text`` warnings (a prompt cut to the model's context) per thread."""

    local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        buf = getattr(self.local, "buf", None)
        if buf is not None and record.levelno >= logging.WARNING:
            message = record.getMessage()
            # the model's own "prompt cut to N tokens"; not the tokenizers' running totals
            if "the model's" in message and message not in buf:
                buf.append(message)


_HANDLER = _ThreadWarnings()


def install_warning_capture() -> None:
    logger = logging.getLogger("tessera.text")
    if _HANDLER not in logger.handlers:
        logger.addHandler(_HANDLER)


def run_generation(
    pipe: Any, p: Params, *, image_prompt: Any = None, keep_rows: int = 0
) -> dict[str, Any]:
    """Generate (on the model's worker thread) and shape the JSON answer."""
    from tessera.data.images import png_bytes, to_uint8

    settings = pipe.settings
    if p.guidance is not None:
        settings = dataclasses.replace(settings, guidance=p.guidance)
    keep = p.n if p.candidates > p.n else None
    extra: dict[str, Any] = {}
    if image_prompt is not None:
        extra = {"image_prompt": image_prompt, "keep_rows": keep_rows}
    t0 = time.perf_counter()
    _HANDLER.local.buf = captured = []
    try:
        samples = pipe.generate(
            [p.prompt], n=p.candidates, seed=p.seed, keep=keep, settings=settings, **extra
        )
    except (DataError, ConfigError, ValueError) as e:
        raise RequestError(422, str(e).splitlines()[0]) from None
    finally:
        _HANDLER.local.buf = None
    seconds = time.perf_counter() - t0
    pixels = to_uint8(samples.images)
    scores = samples.scores
    claims = _claims(p.prompt)
    images = []
    for i, img in enumerate(pixels):
        images.append(
            {
                "png": base64.b64encode(png_bytes(img)).decode("ascii"),
                "width": int(img.shape[1]),
                "height": int(img.shape[0]),
                "score": None if scores is None else round(float(scores[i]), 4),
                "checker": _verdict(img, claims),
            }
        )
    return {
        "model": p.model,
        "prompt": p.prompt,
        "n": p.n,
        "candidates": p.candidates,
        "guidance": float(settings.guidance) if hasattr(settings, "guidance") else None,
        "seed": p.seed,
        "seconds": round(seconds, 3),
        "warnings": [*p.warnings, *captured],
        "checker_understands": claims is not None,
        "images": images,
    }


def _claims(prompt: str) -> Any:
    from tessera.data.shapes import parse_prompt

    try:
        return parse_prompt(prompt)
    except DataError:
        return None


def _verdict(img: Any, claims: Any) -> dict[str, bool | None] | None:
    from tessera.data.shapes import check_image

    if claims is None:
        return None
    try:
        r = check_image(img, claims)
    except DataError:
        return None
    out: dict[str, bool | None] = {"passed": bool(r.passed)}
    for k in _CLAIMS:
        v = getattr(r, k)
        out[k] = None if v is None else bool(v)
    return out

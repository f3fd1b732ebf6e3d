"""What the routes do, without HTTP: load models, check a request against the limits, decode
uploads, run a generation or an image-prompt completion, and shape the answer (PNG base64,
CLIP scores, the shapes checker's verdict per claim). unCLIP's image manipulations are run by
:mod:`tessera.apps.serve.manipulations`."""

from __future__ import annotations

import base64
import dataclasses
import logging
import math
import os
import threading
import time
from typing import Any

from tessera.apps.serve.config import ServeConfig
from tessera.errors import ConfigError, DataError

__all__ = [
    "Params",
    "RequestError",
    "check_params",
    "clean_text",
    "decode_image",
    "describe",
    "jsonable",
    "load_models",
    "load_upload",
    "run_generation",
    "setting_fields",
]

_CLAIMS = ("count", "color_shape", "size", "position", "relation")


class RequestError(Exception):
    """A request the server refuses: ``status`` is its HTTP code, the message one line."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True)
class Params:
    """A checked request: what to generate, with the model's settings the request's fields
    were mapped onto (``settings``: the pipeline's own settings object, already validated)."""

    model: str
    prompt: str
    n: int
    candidates: int
    seed: int
    settings: Any = None
    warnings: tuple[str, ...] = ()


# -- models ----------------------------------------------------------------------------------


def load_models(names: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """Shipped names (``dalle``, ``unclip``) and pipeline folders, resolved by
    :func:`tessera.pipelines.load_pipeline` as everywhere else; a shipped model is served under
    its name, a folder under the folder's name (made unique). Only the operator's command
    line names paths."""
    from tessera.pipelines import load_pipeline, resolve_pipeline
    from tessera.pipelines.loader import SHIPPED_PIPELINES

    out: dict[str, Any] = {}
    for spec in names:
        path = resolve_pipeline(spec)
        name = spec if spec in SHIPPED_PIPELINES else (path.resolve().name or "model")
        base, i = name, 2
        while name in out:
            name, i = f"{base}-{i}", i + 1
        out[name] = load_pipeline(spec)
    return out


# the generic request fields: each sets the field of a model's own settings that its
# ``aliases`` name (unCLIP: guidance -> decoder_guidance, steps -> decoder_steps)
GENERIC_FIELDS = ("guidance", "steps")


def served_specs(pipe: Any) -> list[Any]:
    """The sampling settings a request may set on ``pipe`` (:mod:`tessera.config.sampling`,
    without the operator's own such as ``compile``)."""
    from tessera.config.sampling import SamplingSettings, setting_specs

    settings = getattr(pipe, "settings", None)
    if not isinstance(settings, SamplingSettings):
        return []
    return [s for s in setting_specs(type(settings)) if s.serve]


def setting_fields(pipe: Any) -> dict[str, str]:
    """Every request field a model takes -> the field of its own settings it sets: its served
    settings by name, and the generic fields through the settings' ``aliases``."""
    names = {s.name for s in served_specs(pipe)}
    out = {name: name for name in names}
    aliases = dict(getattr(pipe.settings, "aliases", {}) or {}) if names else {}
    out.update({g: t for g, t in aliases.items() if g in GENERIC_FIELDS and t in names})
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
    fields = setting_fields(pipe)
    if fields:
        info["settings"] = {
            field: {"setting": target, "default": jsonable(getattr(pipe.settings, target))}
            for field, target in fields.items()
            if field in GENERIC_FIELDS
        }
        # every served setting with the model's own value as its default: the page's inputs
        info["setting_specs"] = [
            {**s.to_dict(), "default": jsonable(getattr(pipe.settings, s.name))}
            for s in served_specs(pipe)
        ]
    if "guidance" in fields:
        info["default_guidance"] = float(getattr(pipe.settings, fields["guidance"]))
    room = getattr(pipe, "max_prompt_tokens", None)
    if isinstance(room, int):
        info["max_prompt_tokens"] = room  # longer prompts are cut, with a warning
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
    prompt: str | None,
    n: int,
    candidates: int | None,
    seed: int | None,
    settings: dict[str, Any] | None = None,
    capability: str | None = None,
    prompt_field: str = "prompt",
) -> Params:
    """Check a request against the limits and the chosen model (RequestError: 404 for an
    unknown model, else 422 naming the field).

    ``capability``: what the route needs of the model (``variations``, ``interpolation``,
    ``text_diff``, ``inpainting``: one of its ``capabilities``); a model without it is a 422
    naming both. ``prompt`` None: the route takes none (``Params.prompt`` is then empty);
    ``prompt_field``: the request field it came from, as messages name it.

    ``settings``: the request's sampling fields (None: not given). Each is set on the model's
    own settings through :func:`setting_fields` (a served setting by name; ``guidance`` and
    ``steps`` through the settings' aliases: DALL·E ``guidance``; unCLIP ``decoder_guidance``
    and ``decoder_steps``) and validated there; a field the model has no use for is refused.
    Every ``*steps`` setting is capped at ``max_steps``.

    An overlong prompt is cut with a warning in the answer, for every model alike: past
    ``max_prompt_chars`` here, past the model's text context by the pipeline (whose warning
    :func:`run_generation` passes on), as ``tessera generate`` does."""
    name = model or next(iter(models))
    if name not in models:
        raise RequestError(404, f"unknown model {name!r}; loaded: {', '.join(models)}")
    pipe = models[name]
    caps = pipe.capabilities
    if capability is not None and capability not in caps:
        raise RequestError(
            422,
            f"model {name!r} ({getattr(pipe, 'kind', '?')}) does not support {capability} "
            f"(it supports: {', '.join(sorted(caps))})",
        )
    warnings: list[str] = []
    text = "" if prompt is None else clean_text(prompt, prompt_field, config, warnings)
    if not 1 <= n <= config.max_n:
        raise RequestError(422, f"n must be between 1 and {config.max_n}, got {n}")
    drawn = n if candidates is None else candidates
    if not n <= drawn <= config.max_candidates:
        raise RequestError(
            422, f"candidates must be between n = {n} and {config.max_candidates}, got {drawn}"
        )
    if drawn > n and "rerank" not in caps:
        raise RequestError(422, f"candidates: model {name!r} cannot rerank: must equal n")
    given = {k: v for k, v in (settings or {}).items() if v is not None}
    for field, value in given.items():  # the server's caps on what a request may cost
        if field.endswith("steps") and not 1 <= value <= config.max_steps:
            raise RequestError(
                422, f"{field} must be between 1 and {config.max_steps}, got {value}"
            )
        if field.endswith("candidates") and not 1 <= value <= config.max_candidates:
            raise RequestError(
                422, f"{field} must be between 1 and {config.max_candidates}, got {value}"
            )
    if "guidance" in given and not 0 <= given["guidance"] <= 50:
        raise RequestError(422, f"guidance must be between 0 and 50, got {given['guidance']}")
    chosen = _settings(name, pipe, given)
    if seed is None:
        seed = int.from_bytes(os.urandom(4), "little")
    elif not 0 <= seed < 2**32:
        raise RequestError(422, f"seed must be between 0 and {2**32 - 1}, got {seed}")
    return Params(name, text, n, drawn, seed, chosen, tuple(warnings))


def clean_text(text: str, field: str, config: ServeConfig, warnings: list[str]) -> str:
    """A prompt or caption with its whitespace collapsed: empty is a 422 naming ``field``;
    past ``max_prompt_chars`` it is cut, with a warning appended to ``warnings``."""
    text = " ".join(text.split())
    if not text:
        raise RequestError(422, f"{field} must not be empty")
    if len(text) > config.max_prompt_chars:
        warnings.append(f"{field} cut to {config.max_prompt_chars} characters (it had {len(text)})")
        text = text[: config.max_prompt_chars].rstrip()
    return text


def _settings(name: str, pipe: Any, given: dict[str, Any]) -> Any:
    """The model's settings with the given generic fields set on their targets (422 naming
    the field when the model has no use for it or its settings refuse the value)."""
    fields = setting_fields(pipe)
    settings = getattr(pipe, "settings", None)
    targets = [fields.get(f) for f in given]
    twice = {t for t in targets if t is not None and targets.count(t) > 1}
    if twice:
        both = [f for f in given if fields.get(f) in twice]
        raise RequestError(422, f"{' and '.join(both)} set the same setting: give one of them")
    for field, value in given.items():
        if field not in fields:
            takes = ", ".join(sorted(fields)) or "no sampling settings"
            raise RequestError(
                422,
                f"{field}: model {name!r} ({getattr(pipe, 'kind', '?')}) does not take {field} "
                f"(it takes: {takes})",
            )
        try:
            settings = dataclasses.replace(settings, **{fields[field]: value})
        except (ConfigError, ValueError, TypeError) as e:
            raise RequestError(422, f"{field} ({fields[field]}): {e}") from None
    return settings


def load_upload(data: bytes, config: ServeConfig, what: str = "image") -> Any:
    """Uploaded bytes -> an RGB ``PIL.Image`` at its own size; anything but an allowlisted
    image under the pixel cap is a RequestError 400 (``bad {what}: ...``)."""
    from tessera.config.data import DataConfig
    from tessera.data.image_io import load_image

    if not data:
        raise RequestError(400, f"the uploaded {what} is empty")
    limits = DataConfig(
        image_formats=config.image_formats, max_image_pixels=config.max_image_pixels
    )
    try:
        return load_image(bytes(data), limits)
    except DataError as e:
        raise RequestError(400, f"bad {what}: {_strip_name(str(e))}") from None
    except (OSError, ValueError, SyntaxError) as e:  # a decoder's own complaint
        raise RequestError(400, f"bad {what}: {e}") from None


def decode_image(data: bytes, config: ServeConfig, size: int, what: str = "image") -> Any:
    """Uploaded bytes -> (1, 3, size, size) float in [0, 1] (shorter side resized, centre
    crop); anything but an allowlisted image under the pixel cap is a RequestError 400."""
    from tessera.data.transforms import center_crop, resize_shorter, to_tensor

    img = load_upload(data, config, what)
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

    settings = pipe.settings if p.settings is None else p.settings
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
                "score": _score(scores, i),
                "checker": _verdict(img, claims),
            }
        )
    return {
        "model": p.model,
        "prompt": p.prompt,
        "n": p.n,
        "candidates": p.candidates,
        "guidance": _field(pipe, settings, "guidance"),
        "steps": _field(pipe, settings, "steps"),
        "settings": jsonable(dataclasses.asdict(settings)) if settings is not None else {},
        "seed": p.seed,
        "seconds": round(seconds, 3),
        "warnings": [*p.warnings, *captured],
        "checker_understands": claims is not None,
        "images": images,
    }


def _score(scores: Any, i: int) -> float | None:
    if scores is None or not math.isfinite(float(scores[i])):
        return None
    return round(float(scores[i]), 4)


def _field(pipe: Any, settings: Any, field: str) -> Any:
    """The value a generic field (``guidance``, ``steps``) had in ``settings``, or None."""
    target = setting_fields(pipe).get(field)
    return None if target is None else jsonable(getattr(settings, target))


def jsonable(value: Any) -> Any:
    """``value`` as strict JSON can carry it: non-finite floats and unknown objects become
    strings (Starlette's JSON answers refuse NaN and infinities)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    return str(value)


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

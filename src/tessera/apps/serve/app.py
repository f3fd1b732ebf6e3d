"""The FastAPI application: JSON API, progress as server-sent events, the page, offline docs.

Routes: ``GET /`` (the page), ``GET /healthz``, ``POST /api/generate`` (JSON),
``POST /api/complete`` (multipart: image + prompt + rows kept; DALL·E), unCLIP's
manipulations as multipart uploads -- ``POST /api/variations`` (image), ``/api/interpolate``
(two images), ``/api/textdiff`` (image + from/to captions), ``/api/inpaint`` (image + mask +
prompt) -- each for a model whose ``capabilities`` list it (else a 422 naming both),
``GET /openapi.json`` and ``GET /docs`` (rendered from the OpenAPI JSON by a script in the
package: no CDN). Send ``Accept: text/event-stream`` to any POST route to get ``progress``
events and then one ``result`` (or ``error``) event instead of a single JSON answer.

Every request field is checked against the chosen model's own settings (see
:func:`~tessera.apps.serve.service.check_params`): a bad value or a field the model has no use
for is a 422 naming it; an unexpected exception is a JSON 500 with no traceback, logged once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, create_model

from tessera._version import __version__
from tessera.apps.serve.config import ServeConfig
from tessera.apps.serve.middleware import (
    INTERNAL_ERROR,
    ErrorsMiddleware,
    LimitsMiddleware,
    log_fault,
)
from tessera.apps.serve.service import (
    Params,
    RequestError,
    check_params,
    clean_text,
    decode_image,
    describe,
    install_warning_capture,
    jsonable,
    load_models,
    run_generation,
)
from tessera.apps.serve.slots import Busy, ModelSlot, TimeLimit

__all__ = ["create_app", "static_dir"]


def static_dir() -> Path:
    """The page's files, shipped in the package."""
    return Path(str(resources.files("tessera.apps.serve") / "static"))


class _GenerateBase(BaseModel):
    """A text-to-image request. Omitted fields take the model's defaults (see /healthz)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    prompt: str = Field(
        description="what to draw; past max_prompt_chars (see /healthz) or the model's text "
        "context it is cut, with a warning in the answer (every model alike)"
    )
    model: str | None = Field(None, description="a name from /healthz (default: the first)")
    n: int = Field(4, description="images returned")
    candidates: int | None = Field(
        None, description="samples drawn, reranked by CLIP, best n kept (default: n)"
    )
    seed: int | None = Field(None, description="same seed, same images (default: random)")
    steps: int | None = Field(
        None,
        description="generic: the denoising steps of the model (unCLIP: decoder_steps; "
        "DALL·E has none: 422)",
    )


def _sampling_fields() -> dict[str, Any]:
    """One optional request field per served sampling setting of every pipeline kind, derived
    from :mod:`tessera.config.sampling` (type, choices, bounds, help): the schema in /docs
    follows the settings, and a field the chosen model lacks is refused by name."""
    from tessera.config.sampling import setting_specs, settings_class

    specs: dict[str, Any] = {}
    owners: dict[str, list[str]] = {}
    for kind in ("dalle", "unclip"):
        for spec in setting_specs(settings_class(kind)):
            if spec.serve:
                specs.setdefault(spec.name, spec)
                owners.setdefault(spec.name, []).append(kind)
    fields: dict[str, Any] = {}
    for name, spec in specs.items():
        hint: Any = (
            Literal[spec.choices]  # type: ignore[valid-type]
            if spec.type == "choice"
            else {"int": int, "float": float, "bool": bool}[spec.type]
        )
        note = f"{' and '.join(owners[name])}: {spec.help}"
        for kind in ("dalle", "unclip"):  # a generic field that sets another kind's own
            target = settings_class(kind).aliases.get(name)
            if target and target != name:
                note += f"; {kind}: sets {target}"
        bounds = {k: getattr(spec, k) for k in ("ge", "gt", "le") if getattr(spec, k) is not None}
        fields[name] = (hint | None, Field(None, description=note, **bounds))
    return fields


GenerateRequest = create_model(  # type: ignore[call-overload]
    "GenerateRequest", __base__=_GenerateBase, **_sampling_fields()
)


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


@dataclasses.dataclass
class Server:
    """What the routes share: the limits, the loaded models and one queue per model."""

    config: ServeConfig
    models: dict[str, Any]
    slots: dict[str, ModelSlot]

    def health(self) -> dict[str, Any]:
        c = self.config
        return {
            "status": "ok",
            "version": __version__,
            "models": [
                {**describe(name, pipe), "pending": self.slots[name].pending}
                for name, pipe in self.models.items()
            ],
            "limits": {
                "max_body_bytes": c.max_body_bytes,
                "max_image_pixels": c.max_image_pixels,
                "image_formats": list(c.image_formats),
                "max_prompt_chars": c.max_prompt_chars,
                "max_n": c.max_n,
                "max_candidates": c.max_candidates,
                "max_steps": c.max_steps,
                "queue_size": c.queue_size,
                "request_timeout_s": c.request_timeout_s,
            },
        }

    async def submit(self, request: Request, p: Params, fn: Callable[[], dict[str, Any]]) -> Any:
        """Queue ``fn`` on the model's slot; a JSON answer, or server-sent events."""
        slot = self.slots[p.model]
        try:
            job = slot.submit(fn, cost=p.candidates)
        except Busy as e:
            return _error(429, str(e), {"Retry-After": str(e.retry_after)})
        if "text/event-stream" in request.headers.get("accept", ""):
            return StreamingResponse(
                _events(slot, job),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
            )
        try:
            return await slot.wait(job)
        except TimeLimit as e:
            return _error(504, str(e))
        except RequestError as e:
            return _error(e.status, str(e))
        except Exception as e:  # a fault of the model or of this server: logged once
            log_fault(e, f"{request.method} {request.url.path} ({p.model})")
            return _error(500, INTERNAL_ERROR)


async def _events(slot: ModelSlot, job: Any) -> AsyncIterator[str]:
    waiter = asyncio.ensure_future(slot.wait(job))
    try:
        while True:
            yield _sse("progress", slot.progress(job))
            done, _ = await asyncio.wait({waiter}, timeout=0.25)
            if done:
                break
        try:
            yield _sse("result", waiter.result())
        except TimeLimit as e:
            yield _sse("error", {"status": 504, "detail": str(e)})
        except RequestError as e:
            yield _sse("error", {"status": e.status, "detail": str(e)})
        except Exception as e:  # the answer has started: the fault is an error event
            log_fault(e, f"event stream ({slot.name})")
            yield _sse("error", {"status": 500, "detail": INTERNAL_ERROR})
    finally:
        waiter.cancel()


def _server(request: Request) -> Server:
    return request.app.state.server


router = APIRouter()


@router.get("/healthz", summary="Status and the loaded models with what each supports")
def healthz(server: Server = Depends(_server)) -> dict[str, Any]:  # noqa: B008
    return server.health()


@router.post(
    "/api/generate",
    summary="Text to images",
    description=(
        "Images as base64 PNG, best CLIP score first when the model reranks, each with its CLIP "
        "score and, for prompts the shapes checker understands, its verdict per claim; the "
        "answer also gives the model's settings as run. Every field is checked against the "
        "chosen model: the sampling fields are the models' own settings (each model lists "
        "its `setting_specs` in /healthz), `guidance` and `steps` are generic and set the "
        "model's own (DALL·E: `guidance`, no steps; unCLIP: `decoder_guidance`, "
        "`decoder_steps`), and a field the model has no use for is a 422 naming it; every "
        "`*steps` field is capped at `max_steps`. An overlong prompt is cut, with a warning in "
        "`warnings`, for every model alike: past `max_prompt_chars` (/healthz), then past the "
        "model's text context (`max_prompt_tokens` per model in /healthz). 413: body too large; "
        "422: a limit or an invalid field (the message names the field and the cap); 429 + "
        "Retry-After: the model's queue is full; 504: past the time limit; 500: a server fault "
        "(JSON, no traceback; logged on the server). With `Accept: text/event-stream`: progress "
        "events, then a result or error event."
    ),
)
async def generate(
    body: GenerateRequest,  # type: ignore[valid-type]
    request: Request,
    server: Server = Depends(_server),  # noqa: B008
) -> Any:
    fields = body.model_dump()  # type: ignore[attr-defined]
    base = {k: fields.pop(k) for k in ("model", "prompt", "n", "candidates", "seed")}
    try:
        p = check_params(server.config, server.models, **base, settings=fields)
    except RequestError as e:
        return _error(e.status, str(e))
    pipe = server.models[p.model]
    return await server.submit(request, p, lambda: run_generation(pipe, p))


@router.post(
    "/api/complete",
    summary="Image-prompt completion (DALL·E)",
    description=(
        "Keeps the top `keep_rows` rows of the uploaded image's token grid and lets the model "
        "draw the rest from the prompt. The image is resized (shorter side) and centre-cropped "
        "to the model's size; formats and pixel count are limited (400). Other answers as "
        "/api/generate."
    ),
)
async def complete(
    request: Request,
    image: UploadFile = File(..., description="PNG, JPEG, WebP, GIF or BMP"),  # noqa: B008
    prompt: str = Form(...),
    keep_rows: int | None = Form(None, description="token rows kept (default: half)"),
    model: str | None = Form(None),
    n: int = Form(1),
    candidates: int | None = Form(None),
    guidance: float | None = Form(None),
    seed: int | None = Form(None),
    server: Server = Depends(_server),  # noqa: B008
) -> Any:
    try:
        p = check_params(
            server.config, server.models, model=model, prompt=prompt, n=n,
            candidates=candidates, seed=seed, settings={"guidance": guidance},
        )  # fmt: skip
        pipe = server.models[p.model]
        rows = describe(p.model, pipe).get("image_prompt_rows")
        if rows is None:
            raise RequestError(422, f"model {p.model!r} does not take image prompts")
        keep = rows // 2 if keep_rows is None else keep_rows
        if not 1 <= keep <= rows - 1:
            raise RequestError(
                422, f"keep_rows must be between 1 and {rows - 1} (the grid has {rows} rows)"
            )
        x = decode_image(await image.read(), server.config, pipe.image_size)
    except RequestError as e:
        return _error(e.status, str(e))
    finally:
        await image.close()
    return await server.submit(request, p, lambda: _complete(pipe, p, x, keep))


_IMAGE = "PNG, JPEG, WebP, GIF or BMP; resized (shorter side) and centre-cropped"
_UPLOADS = (
    "Uploads are resized (shorter side) and centre-cropped to the model's size; formats and "
    "pixel count are limited (400). `steps` sets the model's `decoder_steps` (DDIM steps of "
    "inversion and decoding; capped at `max_steps`), `guidance` its `decoder_guidance`. A "
    "model without the capability is a 422 naming it. Every answer carries `inputs` (what the "
    "model was given), `images` (each with a `label`), `layout` (`grid` or `strip`) and the "
    "settings as run; other answers as /api/generate."
)


async def _read(*uploads: UploadFile) -> list[bytes]:
    try:
        return [await u.read() for u in uploads]
    finally:
        for u in uploads:
            await u.close()


def _frames(config: ServeConfig, frames: int) -> None:
    if not 2 <= frames <= config.max_n:
        raise RequestError(422, f"frames must be between 2 and {config.max_n}, got {frames}")


@router.post(
    "/api/variations",
    summary="Variations of an image (unCLIP)",
    description=(
        "The image is CLIP-embedded and DDIM-inverted once under the decoder; the decoder then "
        "samples `n` times from that latent with DDIM η = 1 (decoding with η > 0 gives "
        "variations), at the model's decoder guidance unless `guidance` is given. "
        "Capability `variations`. " + _UPLOADS
    ),
)
async def variations(
    request: Request,
    image: UploadFile = File(..., description=_IMAGE),  # noqa: B008
    model: str | None = Form(None),
    n: int = Form(4, description="variations returned"),
    steps: int | None = Form(None),
    guidance: float | None = Form(None),
    seed: int | None = Form(None),
    server: Server = Depends(_server),  # noqa: B008
) -> Any:
    from tessera.apps.serve.manipulations import run_variations

    (data,) = await _read(image)
    try:
        p = check_params(
            server.config, server.models, model=model, prompt=None, n=n, candidates=None,
            seed=seed, settings={"steps": steps, "guidance": guidance}, capability="variations",
        )  # fmt: skip
        pipe = server.models[p.model]
        x = decode_image(data, server.config, pipe.image_size)
    except RequestError as e:
        return _error(e.status, str(e))
    return await server.submit(request, p, lambda: run_variations(pipe, p, x))


@router.post(
    "/api/interpolate",
    summary="Interpolate between two images (unCLIP)",
    description=(
        "Both images are inverted to (z_i, x_T); `frames` frames slerp both from A (θ = 0) to "
        "B (θ = 1), decoded with DDIM η = 0 unguided, so the end frames reconstruct the "
        "inputs; `seed` sets the upsamplers' noise (the same for every frame). Capability "
        "`interpolation`; `frames` between 2 and `max_n`. " + _UPLOADS
    ),
)
async def interpolate(
    request: Request,
    image_a: UploadFile = File(..., description="the first frame's image; " + _IMAGE),  # noqa: B008
    image_b: UploadFile = File(..., description="the last frame's image; " + _IMAGE),  # noqa: B008
    model: str | None = Form(None),
    frames: int = Form(5, description="frames, A and B included"),
    steps: int | None = Form(None),
    seed: int | None = Form(None),
    server: Server = Depends(_server),  # noqa: B008
) -> Any:
    from tessera.apps.serve.manipulations import run_interpolation

    a_data, b_data = await _read(image_a, image_b)
    try:
        p = check_params(
            server.config, server.models, model=model, prompt=None, n=1, candidates=None,
            seed=seed, settings={"steps": steps}, capability="interpolation",
        )  # fmt: skip
        _frames(server.config, frames)
        p = dataclasses.replace(p, n=frames, candidates=frames)
        pipe = server.models[p.model]
        a = decode_image(a_data, server.config, pipe.image_size, "image_a")
        b = decode_image(b_data, server.config, pipe.image_size, "image_b")
    except RequestError as e:
        return _error(e.status, str(e))
    return await server.submit(request, p, lambda: run_interpolation(pipe, p, a, b))


@router.post(
    "/api/textdiff",
    summary="Edit an image along a text direction (unCLIP text diffs)",
    description=(
        "z_d = normalise(z_t(to_caption) − z_t(from_caption)); `frames` frames decode "
        "slerp(z_i, z_d, θ) for θ from 0 to `max_theta` from the image's inverted x_T with "
        "DDIM η = 0 (θ = 0 reconstructs it). `from_caption` may be empty (the paper's "
        "baseline); captions past the model's text context are a 422. Capability "
        "`text_diff`; `frames` between 2 and `max_n`. " + _UPLOADS
    ),
)
async def textdiff(
    request: Request,
    image: UploadFile = File(..., description=_IMAGE),  # noqa: B008
    to_caption: str = Form(..., description="what the image should show"),
    from_caption: str = Form("", description="what the image shows (may be empty)"),
    max_theta: float = Form(0.5, description="the last frame's θ, in (0, 1]"),
    model: str | None = Form(None),
    frames: int = Form(5, description="frames, θ = 0 included"),
    steps: int | None = Form(None),
    seed: int | None = Form(None),
    server: Server = Depends(_server),  # noqa: B008
) -> Any:
    from tessera.apps.serve.manipulations import run_text_diff

    (data,) = await _read(image)
    try:
        p = check_params(
            server.config, server.models, model=model, prompt=to_caption, n=1,
            candidates=None, seed=seed, settings={"steps": steps}, capability="text_diff",
            prompt_field="to_caption",
        )  # fmt: skip
        _frames(server.config, frames)
        if not 0 < max_theta <= 1:
            raise RequestError(422, f"max_theta must be in (0, 1], got {max_theta}")
        warnings = list(p.warnings)
        source = (
            clean_text(from_caption, "from_caption", server.config, warnings)
            if from_caption.strip()
            else ""
        )
        p = dataclasses.replace(p, n=frames, candidates=frames, warnings=tuple(warnings))
        pipe = server.models[p.model]
        _check_captions(pipe, [source, p.prompt])
        x = decode_image(data, server.config, pipe.image_size)
    except RequestError as e:
        return _error(e.status, str(e))
    return await server.submit(request, p, lambda: run_text_diff(pipe, p, x, source, max_theta))


@router.post(
    "/api/inpaint",
    summary="Repaint the masked region of an image (unCLIP inpainting)",
    description=(
        "The decoder and every upsampler fill the region the mask marks (white = repaint, "
        "black = keep; grey is thresholded at half) so that the image matches `prompt` "
        "(RePaint, no retraining); pixels outside the mask are the input's. The mask may be "
        "at any resolution (the page sends it at the image's displayed size): it is resized "
        "nearest onto the image, then cropped with it. An empty mask (inside the centred "
        "square the model sees) is a 422. `n` results, best CLIP score first. `resample` / "
        "`jump`: RePaint's resampling (`resample` × `steps` is capped at `max_steps`). "
        "Capability `inpainting`; a prompt past the model's text context is a 422. " + _UPLOADS
    ),
)
async def inpaint(
    request: Request,
    image: UploadFile = File(..., description=_IMAGE),  # noqa: B008
    mask: UploadFile = File(..., description="white = repaint, black = keep; any size"),  # noqa: B008
    prompt: str = Form(..., description="what the whole image should show"),
    model: str | None = Form(None),
    n: int = Form(4, description="results, best CLIP score first"),
    steps: int | None = Form(None),
    guidance: float | None = Form(None),
    seed: int | None = Form(None),
    resample: int = Form(1, description="RePaint resamplings per jump (1: none)"),
    jump: int = Form(1, description="RePaint jump length in steps"),
    server: Server = Depends(_server),  # noqa: B008
) -> Any:
    from tessera.apps.serve.manipulations import decode_image_and_mask, run_inpainting

    image_data, mask_data = await _read(image, mask)
    try:
        p = check_params(
            server.config, server.models, model=model, prompt=prompt, n=n, candidates=None,
            seed=seed, settings={"steps": steps, "guidance": guidance}, capability="inpainting",
        )  # fmt: skip
        pipe = server.models[p.model]
        steps_run = p.settings.decoder_steps
        if resample < 1 or resample * steps_run > server.config.max_steps:
            raise RequestError(
                422,
                f"resample must be between 1 and {server.config.max_steps // steps_run} "
                f"(resample × steps = {resample} × {steps_run} is capped at max_steps = "
                f"{server.config.max_steps}), got {resample}",
            )
        if not 1 <= jump <= server.config.max_steps:
            raise RequestError(
                422, f"jump must be between 1 and {server.config.max_steps}, got {jump}"
            )
        _check_captions(pipe, [p.prompt])
        x, m = decode_image_and_mask(image_data, mask_data, server.config, pipe.image_size)
        p = dataclasses.replace(p, candidates=p.n * resample)  # the queue's cost estimate
    except RequestError as e:
        return _error(e.status, str(e))
    return await server.submit(
        request, p, lambda: run_inpainting(pipe, p, x, m, resample=resample, jump=jump)
    )


def _check_captions(pipe: Any, captions: list[str]) -> None:
    """Captions the model would cut are refused before queueing (the manipulations refuse
    them rather than cut them silently)."""
    from tessera.errors import DataError

    try:
        pipe.check_caption_lengths(captions)
    except DataError as e:
        raise RequestError(422, str(e).splitlines()[0]) from None


@router.get("/docs", include_in_schema=False)
def docs() -> FileResponse:
    return FileResponse(static_dir() / "docs.html")


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(static_dir() / "index.html")


async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
    # inputs such as 1e400 or Infinity are echoed in the errors: made strict JSON
    errs = jsonable(list(exc.errors()))
    first = errs[0] if errs else {}
    where = ".".join(str(x) for x in first.get("loc", ()) if x != "body") or "body"
    msg = f"{where}: {first.get('msg', 'invalid request')}"
    if first.get("type") == "json_invalid":
        msg = f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}"
    return JSONResponse({"detail": msg, "errors": errs}, 422)


def create_app(config: ServeConfig | None = None, *, pipelines: dict[str, Any] | None = None):  # noqa: ANN201
    """The app serving ``pipelines`` (default: load ``config.models``)."""
    config = config or ServeConfig()
    models = pipelines if pipelines is not None else load_models(config.models)
    slots = {
        name: ModelSlot(name, queue_size=config.queue_size, timeout_s=config.request_timeout_s)
        for name in models
    }
    install_warning_capture()

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for slot in slots.values():
            slot.close()

    app = FastAPI(
        lifespan=lifespan,
        title="tessera serve",
        version=__version__,
        description="Text-to-image generation with the loaded tessera pipelines.",
        docs_url=None,
        redoc_url=None,
    )
    app.state.server = Server(config, models, slots)
    app.state.config, app.state.models, app.state.slots = config, models, slots
    # inner first: an unexpected exception becomes a JSON 500 (logged once) inside the
    # limits middleware, so it carries the security headers too
    app.add_middleware(ErrorsMiddleware)
    app.add_middleware(LimitsMiddleware, max_body_bytes=config.max_body_bytes)
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    return app


def _complete(pipe: Any, p: Params, x: Any, keep_rows: int) -> dict[str, Any]:
    """Image-prompt completion; the answer also shows what the model was given."""
    import base64

    from tessera.data.images import png_bytes, to_uint8

    out = run_generation(pipe, p, image_prompt=x, keep_rows=keep_rows)
    given = to_uint8(x)[0].copy()
    grid = describe(p.model, pipe)["image_prompt_rows"]
    given[keep_rows * given.shape[0] // grid :] = 255
    out["keep_rows"] = keep_rows
    out["given"] = base64.b64encode(png_bytes(given)).decode("ascii")
    return out


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(jsonable(data))}\n\n"

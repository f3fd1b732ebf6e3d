"""Every generator's sampling settings, one frozen dataclass per pipeline kind.

A field is declared once, with :func:`setting`: its type (``Literal`` for closed choices), its
default, one line of help and its bounds. Everything a person sets it through is derived from
that declaration by :func:`setting_specs`: the ``tessera generate`` flags (``--top-k`` for
``top_k``), the server's request fields and its ``/docs`` schema, and the page's inputs. So
adding a setting is one edit here (plus its use in the sampler), and a field the chosen model
does not have is refused by name wherever it is sent.

``aliases`` maps the generic knobs of front ends (``guidance``, ``steps``) onto a kind's own
field: unCLIP's ``guidance`` is its decoder's.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, ClassVar, Literal

from tessera.config.base import Config
from tessera.errors import ConfigError

__all__ = [
    "DalleSampling",
    "PriorKind",
    "SamplingSettings",
    "SettingSpec",
    "UnclipSampling",
    "setting",
    "setting_specs",
    "settings_class",
]


PriorKind = Literal["diffusion", "ar"]


def setting(
    default: Any,
    help: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    front: bool = True,
    serve: bool = True,
) -> Any:
    """A sampling field: its default, one line of help (units, range, the paper's value) and
    numeric bounds checked on construction. ``front=False`` keeps it out of the CLI, the API and
    the page (library and benchmark knobs); ``serve=False`` out of the API and the page only
    (the server's operator decides it, not a request)."""
    meta = {"help": help, "ge": ge, "gt": gt, "le": le, "front": front, "serve": serve}
    return dataclasses.field(default=default, metadata=meta)


@dataclasses.dataclass(frozen=True)
class SettingSpec:
    """What a front end needs to offer one field: ``type`` is ``float``, ``int``, ``bool`` or
    ``choice`` (with ``choices``)."""

    name: str
    type: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    serve: bool = True

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    def to_dict(self) -> dict[str, Any]:
        skip = ("serve",)
        out = {
            k: v
            for k, v in dataclasses.asdict(self).items()
            if v not in (None, ()) and k not in skip
        }
        out["default"] = self.default  # also when it is None-like
        return out


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingSettings(Config):
    """Base of the sampling settings: checks every field's bounds."""

    kind: ClassVar[str] = "sampling"
    aliases: ClassVar[dict[str, str]] = {}

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                continue
            name = f.name
            ge, gt, le = f.metadata.get("ge"), f.metadata.get("gt"), f.metadata.get("le")
            if ge is not None and not value >= ge:
                raise ConfigError(f"{name} must be >= {ge}, got {value}")
            if gt is not None and not value > gt:
                raise ConfigError(f"{name} must be > {gt}, got {value}")
            if le is not None and not value <= le:
                raise ConfigError(f"{name} must be <= {le}, got {value}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DalleSampling(SamplingSettings):
    """How DALL·E draws image tokens (:func:`tessera.sampling.sample.sample_tokens`): the logit
    filters (:mod:`tessera.sampling.filters`), classifier-free guidance and the sampler's own
    switches."""

    kind: ClassVar[str] = "sampling.dalle"
    aliases: ClassVar[dict[str, str]] = {"guidance": "guidance"}

    temperature: float = setting(1.0, "softmax temperature of every token draw", gt=0)
    top_k: int = setting(0, "keep the k most likely tokens; 0 keeps all", ge=0)
    top_p: float = setting(
        1.0, "nucleus: keep the most likely tokens holding this mass; 1 keeps all", gt=0, le=1
    )
    threshold: float = setting(
        0.0, "drop tokens below this share of the most likely one's probability", ge=0, le=1
    )
    guidance: float = setting(
        1.0, "classifier-free guidance scale; 1 disables it (the paper has none)", ge=0
    )
    use_cache: bool = setting(
        True, "KV cache (False re-runs the whole prefix per token)", front=False
    )
    compile: bool = setting(
        False,
        "compile the per-token step: a one-off ~30 s, then ~2-3x faster per token",
        serve=False,
    )

    def validate(self) -> None:
        super().validate()
        if self.compile and not self.use_cache:
            raise ConfigError("compile needs use_cache (the compiled step reads the KV cache)")


@dataclasses.dataclass(frozen=True, kw_only=True)
class UnclipSampling(SamplingSettings):
    """How an unCLIP pipeline samples: prior -> decoder -> upsamplers."""

    kind: ClassVar[str] = "sampling.unclip"
    aliases: ClassVar[dict[str, str]] = {"guidance": "decoder_guidance", "steps": "decoder_steps"}

    prior_kind: PriorKind = setting(  # noqa: RUF009 (a Literal: immutable)
        "diffusion", "which prior samples the image embedding (the folder must hold it)"
    )
    prior_steps: int = setting(25, "DDIM steps of the diffusion prior (the paper: 64)", ge=2)
    prior_guidance: float = setting(
        1.0, "the prior's guidance scale (the paper: guiding the prior hurt, 1)", ge=0
    )
    prior_candidates: int = setting(
        2, "prior samples per caption, keeping the closest to the text (the paper: 2)", ge=1
    )
    decoder_sampler: Literal["ddim", "ddpm"] = setting(
        "ddim", "the decoder's sampler: ddim, or ddpm (ancestral, its learned variance)"
    )
    decoder_steps: int = setting(25, "the decoder's denoising steps (Karlo: 25)", ge=2)
    decoder_guidance: float = setting(
        3.0, "the decoder's guidance scale (Karlo: 8; the paper's COCO runs: 1.25)", ge=0
    )
    eta: float = setting(0.0, "DDIM's eta: 0 is deterministic given the noise", ge=0, le=1)
    upsampler_steps: int = setting(
        7, "DDIM steps of every upsampler (the paper: 27 and 15; Karlo: 7)", ge=2
    )


_BY_PIPELINE: dict[str, type[SamplingSettings]] = {"dalle": DalleSampling, "unclip": UnclipSampling}


def settings_class(pipeline_kind: str) -> type[SamplingSettings]:
    """The sampling settings of a pipeline kind (``dalle``, ``unclip``)."""
    try:
        return _BY_PIPELINE[pipeline_kind]
    except KeyError:
        raise ConfigError(f"no sampling settings for pipeline kind {pipeline_kind!r}") from None


def setting_specs(cls: type[SamplingSettings], *, front_only: bool = True) -> list[SettingSpec]:
    """The fields of ``cls`` as front ends offer them (``front_only``: without library knobs)."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if front_only and not f.metadata.get("front", True):
            continue
        hint = hints[f.name]
        choices: tuple[str, ...] = ()
        if typing.get_origin(hint) is Literal:
            kind, choices = "choice", tuple(str(a) for a in typing.get_args(hint))
        else:
            kind = {float: "float", int: "int", bool: "bool", str: "str"}[hint]
        meta = f.metadata
        out.append(
            SettingSpec(
                name=f.name,
                type=kind,
                default=f.default,
                help=meta.get("help", ""),
                choices=choices,
                ge=meta.get("ge"),
                gt=meta.get("gt"),
                le=meta.get("le"),
                serve=meta.get("serve", True),
            )
        )
    return out

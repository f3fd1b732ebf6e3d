"""Which config class and builder make each kind of checkpoint: the one static table.

``checkpoint.py`` builds every object through :func:`kind_spec`. The built-in kinds are named
here as ``"module:attribute"`` strings and imported only when a checkpoint of that kind is
loaded, so this module (and ``checkpoint.py``) imports no model: loading a tokenizer never
imports the transformer, and nothing below the model packages depends on them.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tessera.config.base import Config
from tessera.errors import CheckpointError

__all__ = ["BUILTIN_KINDS", "KindSpec", "kind_spec", "known_kinds", "register_kind"]


@dataclasses.dataclass(frozen=True)
class KindSpec:
    """How to rebuild one kind of checkpoint.

    config_cls: the kind's :class:`Config` subclass.
    build: config -> object (an ``nn.Module`` whose weights come from ``model.safetensors``).
    load_dir: optional loader that reads the whole directory itself (e.g. tokenizers).
    """

    config_cls: type[Config]
    build: Callable[[Any], Any] | None = None
    load_dir: Callable[[Path], Any] | None = None


# kind -> (config class, builder or None, directory loader or None), as "module:attr" paths.
BUILTIN_KINDS: dict[str, tuple[str, str | None, str | None]] = {
    "tokenizer": ("tessera.config.text:TokenizerConfig", None, "tessera.text:TextTokenizer.load"),
    "vae": ("tessera.config.vae:VAEConfig", "tessera.vae.model:DiscreteVAE", None),
    "vqgan": ("tessera.config.vqgan:VQGANConfig", "tessera.vae.vqgan:VQGAN", None),
    "dalle": ("tessera.config.dalle:DalleConfig", "tessera.models.dalle:DALLE", None),
    "clip": ("tessera.config.clip:CLIPConfig", "tessera.models.clip:CLIP", None),
    "decoder": ("tessera.config.decoder:DecoderConfig", "tessera.models.decoder:Decoder", None),
    "upsampler": (
        "tessera.config.upsampler:UpsamplerConfig",
        "tessera.models.upsampler:Upsampler",
        None,
    ),
    "prior": ("tessera.config.prior:PriorConfig", "tessera.models.prior:DiffusionPrior", None),
    "ar_prior": ("tessera.config.prior:ARPriorConfig", "tessera.models.prior:ARPrior", None),
}

_KINDS: dict[str, KindSpec] = {}


def _resolve(path: str) -> Any:
    module, _, attrs = path.partition(":")
    obj: Any = importlib.import_module(module)
    for attr in attrs.split("."):
        obj = getattr(obj, attr)
    return obj


def register_kind(kind: str, spec: KindSpec) -> None:
    """Register (or replace) how a checkpoint kind is rebuilt (e.g. a user's own model)."""
    _KINDS[kind] = spec


def known_kinds() -> list[str]:
    return sorted(set(_KINDS) | set(BUILTIN_KINDS))


def kind_spec(kind: str) -> KindSpec:
    """The :class:`KindSpec` of ``kind``; an unknown kind is a one-line :class:`CheckpointError`."""
    if kind not in _KINDS and kind in BUILTIN_KINDS:
        cfg, build, load_dir = BUILTIN_KINDS[kind]
        _KINDS[kind] = KindSpec(
            config_cls=_resolve(cfg),
            build=None if build is None else _resolve(build),
            load_dir=None if load_dir is None else _resolve(load_dir),
        )
    if kind not in _KINDS:
        raise CheckpointError(
            f"unknown checkpoint kind {kind!r} (known kinds: {', '.join(known_kinds())})"
        )
    return _KINDS[kind]

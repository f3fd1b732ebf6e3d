"""Named presets of every config kind: ``preset(kind, name)``.

Each config module registers its presets with :func:`~tessera.config.base.register_preset`
when imported; this module imports them all, so every kind is known here (model configs
``vae``, ``dalle``, ``clip``, ``tokenizer``, ``data``, ``shapes``, ``diffusion`` and the training
recipes ``train.vae``, ``train.dalle``, ``train.clip``).
"""

from __future__ import annotations

from tessera.config import (  # noqa: F401
    clip,
    dalle,
    data,
    decoder,
    diffusion,
    prior,
    shapes,
    text,
    training,
    unet,
    upsampler,
    vae,
    vqgan,
)
from tessera.config.base import _PRESETS, Config
from tessera.errors import ConfigError

__all__ = ["preset", "preset_kinds", "preset_names"]


def preset(kind: str, name: str) -> Config:
    """Build the named preset of a config kind; unknown names give a one-line error."""
    table = _PRESETS.get(kind)
    if not table:
        raise ConfigError(
            f"no presets for config kind {kind!r}; kinds: {', '.join(preset_kinds())}"
        )
    if name not in table:
        raise ConfigError(
            f"unknown {kind} preset {name!r}; choose from: {', '.join(sorted(table))}"
        )
    return table[name]()


def preset_names(kind: str) -> list[str]:
    return sorted(_PRESETS.get(kind, {}))


def preset_kinds() -> list[str]:
    return sorted(_PRESETS)

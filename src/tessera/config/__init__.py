"""Typed, frozen, keyword-only configs for every component, with JSON round trips and presets."""

from tessera.config.base import Config, register_preset
from tessera.config.data import DataConfig
from tessera.config.presets import preset, preset_kinds, preset_names
from tessera.config.shapes import ShapesConfig
from tessera.config.text import TokenizerConfig
from tessera.config.training import TrainConfig

__all__ = [
    "Config",
    "DataConfig",
    "ShapesConfig",
    "TokenizerConfig",
    "TrainConfig",
    "preset",
    "preset_kinds",
    "preset_names",
    "register_preset",
]

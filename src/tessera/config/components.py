"""Imports every config module so that their presets are registered."""

from tessera.config import dalle, data, shapes, text, training, vae  # noqa: F401

"""Imports every config module so that their presets are registered."""

from tessera.config import clip, dalle, data, shapes, text, training, vae  # noqa: F401

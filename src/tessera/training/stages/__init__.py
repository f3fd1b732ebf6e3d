"""The trainable stages: one binding per component (model + objective + batches + export).

``STAGES`` is a static table, name -> ``module:attribute`` of its :class:`Stage`; a stage's
module (and with it its model and the trainer) is imported only when that stage is asked for.
"""

from __future__ import annotations

import importlib

from tessera.errors import ConfigError
from tessera.training.stages.base import DataSpec, Stage

__all__ = ["STAGES", "DataSpec", "Stage", "get_stage"]

STAGES: dict[str, str] = {
    "vae": "tessera.training.stages.vae:STAGE",
    "vqgan": "tessera.training.stages.vqgan:STAGE",
    "dalle": "tessera.training.stages.dalle:STAGE",
    "clip": "tessera.training.stages.clip:STAGE",
    "decoder": "tessera.training.stages.decoder:STAGE",
    "upsampler": "tessera.training.stages.upsampler:STAGE",
    "prior": "tessera.training.stages.prior:STAGE",
    "ar_prior": "tessera.training.stages.prior:AR_STAGE",
}


def get_stage(name: str) -> Stage:
    """The :class:`Stage` called ``name``; an unknown name is a one-line :class:`ConfigError`."""
    if name not in STAGES:
        raise ConfigError(f"unknown stage {name!r}; choose from: {', '.join(sorted(STAGES))}")
    module, attr = STAGES[name].split(":")
    return getattr(importlib.import_module(module), attr)

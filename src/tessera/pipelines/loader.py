"""``load_pipeline``: any pipeline folder -> a :class:`~tessera.pipelines.base.TextToImage`.

Pipeline classes are found through :data:`~tessera.pipelines.base.PIPELINE_KINDS` and imported
only when a folder of their kind is loaded.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from tessera.errors import CheckpointError
from tessera.pipelines.base import MODEL_INDEX, PIPELINE_KINDS, TextToImage, read_index

__all__ = ["load_pipeline"]


def load_pipeline(path: str | Path, **options: Any) -> TextToImage:
    """Load any pipeline folder as a :class:`TextToImage`.

    A folder with ``model_index.json`` is built by its pipeline kind; a DALL·E transformer
    checkpoint with its dVAE in ``vae/`` (what ``tessera dalle train`` exports, and the layout
    before pipeline folders) loads as a DALL·E pipeline. ``options`` go to the pipeline's
    loader (DALL·E: ``vae=DIR`` for a dVAE kept elsewhere, ``clip=DIR`` for another reranker).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"pipeline checkpoint not found: {path}")
    if (path / MODEL_INDEX).is_file():
        index = read_index(path)
        return _pipeline_class(index.pipeline).from_folder(path, index, **options)
    return _pipeline_class("dalle").from_checkpoint(path, **options)


def _pipeline_class(kind: str) -> Any:
    module, attr = PIPELINE_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), attr)

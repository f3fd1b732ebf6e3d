"""``load_pipeline``: a shipped pipeline's name or any pipeline folder -> a
:class:`~tessera.pipelines.base.TextToImage`.

Names are resolved here and nowhere else, so every entry point (``tessera generate``,
``serve``, ``demo``, ``eval``, ``variations`` / ``interpolate`` / ``textdiff`` and the library's
``tessera.load_pipeline``) means the same thing by them: ``"dalle"`` is the shipped DALL·E
pipeline, ``"unclip"`` the shipped DALL·E 2 (unCLIP) one (both trained on ``shapes``, under
``tessera/assets/shapes``). Anything else is a folder; write ``./dalle`` for a folder that
happens to carry a shipped name. Pipeline classes are found through
:data:`~tessera.pipelines.base.PIPELINE_KINDS` and imported only when a folder of their kind is
loaded.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from tessera.errors import CheckpointError, ConfigError
from tessera.pipelines.base import MODEL_INDEX, PIPELINE_KINDS, TextToImage, read_index

__all__ = ["SHIPPED_PIPELINES", "load_pipeline", "pipeline_kind", "resolve_pipeline"]

# shipped name -> its folder under tessera/assets/shapes
SHIPPED_PIPELINES: dict[str, str] = {"dalle": "pipeline", "unclip": "unclip"}
# shipped name -> (what to call it, the ``tessera train`` preset that makes it)
_SHIPPED_HOW = {"dalle": ("DALL·E", "shapes"), "unclip": ("unCLIP", "shapes-unclip")}


def resolve_pipeline(name_or_path: str | Path) -> Path:
    """The folder a shipped name (a ``str`` key of :data:`SHIPPED_PIPELINES`) or a path means.

    A shipped name whose folder is not installed is a one-line :class:`CheckpointError`; a
    path is returned as given (a ``Path`` is always a path, never a name)."""
    if isinstance(name_or_path, str) and name_or_path in SHIPPED_PIPELINES:
        from tessera.checkpoint import shipped_dir

        folder = shipped_dir(SHIPPED_PIPELINES[name_or_path])
        if not (folder / MODEL_INDEX).is_file():
            what, recipe = _SHIPPED_HOW[name_or_path]
            raise CheckpointError(
                f"the shipped {what} pipeline is not installed ({folder}): train it with "
                f"`tessera train --preset {recipe} --install {folder.parent}`, or pass a "
                "pipeline folder (--model DIR)"
            )
        return folder
    return Path(name_or_path)


def pipeline_kind(name_or_path: str | Path) -> str:
    """The pipeline kind (``"dalle"``, ``"unclip"``) of a name or folder, without loading it."""
    path = resolve_pipeline(name_or_path)
    if not path.exists():
        raise CheckpointError(f"pipeline checkpoint not found: {path}")
    return read_index(path).pipeline if (path / MODEL_INDEX).is_file() else "dalle"


def load_pipeline(path: str | Path, **options: Any) -> TextToImage:
    """Load a shipped pipeline by name (``"dalle"``, ``"unclip"``) or any pipeline folder.

    A folder with ``model_index.json`` is built by its pipeline kind; a DALL·E transformer
    checkpoint with its dVAE in ``vae/`` (what ``tessera dalle train`` exports, and the layout
    before pipeline folders) loads as a DALL·E pipeline. ``options`` go to the pipeline's
    loader (DALL·E: ``vae=DIR`` for a dVAE kept elsewhere, ``clip=DIR`` for another reranker);
    an option the kind does not take is a one-line :class:`ConfigError`.
    """
    path = resolve_pipeline(path)
    if not path.exists():
        raise CheckpointError(f"pipeline checkpoint not found: {path}")
    if (path / MODEL_INDEX).is_file():
        index = read_index(path)
        cls = _pipeline_class(index.pipeline)
        _check_options(cls.from_folder, index.pipeline, options)
        pipe: TextToImage = cls.from_folder(path, index, **options)
        return pipe
    cls = _pipeline_class("dalle")
    _check_options(cls.from_checkpoint, "dalle", options)
    dalle: TextToImage = cls.from_checkpoint(path, **options)
    return dalle


def _pipeline_class(kind: str) -> Any:
    module, attr = PIPELINE_KINDS[kind].split(":")
    return getattr(importlib.import_module(module), attr)


def _check_options(loader: Any, kind: str, options: dict[str, Any]) -> None:
    params = inspect.signature(loader).parameters.values()
    known = {p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    unknown = sorted(set(options) - known)
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise ConfigError(
            f"{', '.join(unknown)}: not an option of a {kind} pipeline (it takes: {takes})"
        )

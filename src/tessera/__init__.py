"""tessera: a faithful, fast, tested DALL·E and DALL·E 2 (unCLIP) toolkit.

The top-level namespace stays tiny and cheap to import: heavy modules load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tessera._version import __version__

if TYPE_CHECKING:
    from tessera.data.shapes import check_image

__all__ = ["__version__", "check_image", "load", "load_pipeline", "preset"]


def load(path: str, **kwargs: Any) -> Any:
    """Load any tessera checkpoint directory (model, tokenizer, ...). See ``tessera.checkpoint``."""
    from tessera.checkpoint import load as _load

    return _load(path, **kwargs)


def load_pipeline(path: str, **kwargs: Any) -> Any:
    """Load a shipped pipeline by name (``"dalle"``, ``"unclip"``) or a pipeline folder as a
    text-to-image generator. See ``tessera.pipelines.load_pipeline``."""
    from tessera.pipelines import load_pipeline as _load_pipeline

    return _load_pipeline(path, **kwargs)


def preset(kind: str, name: str) -> Any:
    """Build the named preset config of a component kind (e.g. ``preset("shapes", "default")``)."""
    from tessera.config import preset as _preset

    return _preset(kind, name)


def __getattr__(name: str) -> Any:
    if name == "check_image":
        from tessera.data.shapes import check_image

        return check_image
    raise AttributeError(f"module 'tessera' has no attribute {name!r}")

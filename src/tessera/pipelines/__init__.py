"""Text-to-image pipelines behind one protocol, loaded from pipeline folders.

``base``: the :class:`TextToImage` protocol, :class:`Samples`, the manifest writer and the
pipeline folder (``model_index.json``); ``dalle``: DALL·E (transformer + dVAE + CLIP
reranking); ``unclip``: DALL·E 2; ``loader``: :func:`load_pipeline`, which also resolves the
shipped names ``"dalle"`` and ``"unclip"`` (the only place that does).
"""

from tessera.pipelines.base import Samples, TextToImage, write_samples
from tessera.pipelines.loader import load_pipeline, pipeline_kind, resolve_pipeline

__all__ = [
    "Samples",
    "TextToImage",
    "load_pipeline",
    "pipeline_kind",
    "resolve_pipeline",
    "write_samples",
]

"""Text-to-image pipelines behind one protocol, loaded from pipeline folders.

``base``: the :class:`TextToImage` protocol, :class:`Samples`, the manifest writer and the
pipeline folder (``model_index.json``); ``dalle``: DALL·E (transformer + dVAE + CLIP
reranking); ``loader``: :func:`load_pipeline`.
"""

from tessera.pipelines.base import Samples, TextToImage, write_samples
from tessera.pipelines.loader import load_pipeline

__all__ = ["Samples", "TextToImage", "load_pipeline", "write_samples"]

"""ruDALL-E's own modules as test-only references, loaded from the installed ``rudalle`` wheel.

``import rudalle`` cannot work here: its package ``__init__`` imports the whole toolkit
(torchvision, an old ``transformers``, ``huggingface_hub.cached_download``, OpenCV, PyWavelets).
The reference code the parity tests need -- ``rudalle/dalle/{model,transformer,
image_attention,utils}.py`` and ``rudalle/vae/model.py`` -- imports none of that, so those files
are executed as they ship, as a package of their own, without running ``rudalle/__init__.py``.
The one import cut is ``rudalle.vae.decoder_dwt`` (PyWavelets), used only by the DWT decoder
variant (``dwt=True``), which the tests never build.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from helpers.references import missing_reference


def _root() -> Path:
    spec = importlib.util.find_spec("rudalle")
    if spec is None or not spec.submodule_search_locations:
        missing_reference("rudalle")
    for name in ("einops", "taming"):
        if importlib.util.find_spec(name) is None:
            missing_reference(name if name == "einops" else "taming-transformers")
    return Path(next(iter(spec.submodule_search_locations)))


def _load(package: str, name: str, file: Path) -> types.ModuleType:
    full = f"{package}.{name}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.spec_from_file_location(full, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    return module


def _package(name: str, path: Path) -> None:
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules[name] = pkg


def dalle_module() -> types.ModuleType:
    """``rudalle/dalle/model.py`` (its ``DalleModel``), with its sibling modules."""
    root = _root()
    _package("_rudalle_ref", root)
    _package("_rudalle_ref.dalle", root / "dalle")
    for name in ("utils", "image_attention", "transformer"):
        _load("_rudalle_ref.dalle", name, root / "dalle" / f"{name}.py")
    return _load("_rudalle_ref.dalle", "model", root / "dalle" / "model.py")


def vae_module() -> types.ModuleType:
    """``rudalle/vae/model.py`` (``VQGanGumbelVAE``, ``GumbelVQ`` on taming's Encoder/Decoder)."""
    root = _root()
    _package("_rudalle_ref", root)
    _package("_rudalle_ref.vae", root / "vae")
    stub = types.ModuleType("_rudalle_ref.vae.decoder_dwt")
    stub.DecoderDWT = None  # only for dwt=True
    sys.modules.setdefault("_rudalle_ref.vae.decoder_dwt", stub)
    return _load("_rudalle_ref.vae", "model", root / "vae" / "model.py")

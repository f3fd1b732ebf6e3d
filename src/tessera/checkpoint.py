"""Self-describing checkpoints: ``config.json`` + ``*.safetensors`` (+ ``tokenizer.json``).

One loader serves every kind. ``config.json`` names its ``kind``; the kind's config class in
the static table of :mod:`tessera.registry` parses it strictly and its builder makes the
object, whose weights then come from ``model.safetensors`` (nothing is unpickled). A legacy
``.pt`` state dict loads only through :func:`load_legacy_state_dict` with
``allow_legacy_pt=True``, and then only with ``torch.load(weights_only=True)`` — never with a
fallback to full unpickling.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from tessera._version import __version__
from tessera.config.base import Config
from tessera.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from tessera.io import atomic_dir
from tessera.registry import KindSpec, kind_spec, register_kind

__all__ = [
    "KindSpec",
    "LoadedCheckpoint",
    "load",
    "load_checkpoint",
    "load_legacy_state_dict",
    "load_weights",
    "read_config",
    "register_kind",
    "save",
]

log = logging.getLogger("tessera.checkpoint")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


@dataclasses.dataclass
class LoadedCheckpoint:
    kind: str
    config: Config
    obj: Any
    metadata: dict[str, str]
    tokenizer: Any | None = None


def save(
    path: str | Path,
    *,
    config: Config,
    model: Any | None = None,
    tokenizer: Any | None = None,
    metadata: dict[str, str] | None = None,
    overwrite: bool = False,
    dtype: str | None = None,
) -> Path:
    """Write a checkpoint directory atomically (temporary directory, fsync, rename).

    model: an ``nn.Module``; saved with ``safetensors.torch.save_model`` so tied weights stay tied.
    tokenizer: a ``tessera.text.TextTokenizer``, written as ``tokenizer.json`` beside the weights.
    dtype: ``"float16"`` stores the float32 weights as float16 (half the size on disk; loading
      casts back to the model's dtype); values beyond float16's range are refused. Tensors
      under the model's ``FULL_PRECISION`` name prefixes stay float32 (an image tokenizer's
      codebooks: a nearest-code search must encode as it did in training).
    """
    if dtype not in (None, "float16"):
        raise CheckpointError(f"dtype must be None or 'float16', got {dtype!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"checkpoint directory already exists: {path} (pass overwrite=True)")
    with atomic_dir(path) as tmp:
        (tmp / CONFIG_FILE).write_text(config.to_json(), encoding="utf-8")
        if model is not None:
            from safetensors.torch import save_model

            meta = {"format": "pt", "tessera_version": __version__, "kind": config.kind}
            meta.update(metadata or {})
            save_model(model, str(tmp / WEIGHTS_FILE), metadata=meta)
            if dtype == "float16":
                _store_half(tmp / WEIGHTS_FILE, keep=tuple(getattr(model, "FULL_PRECISION", ())))
        if tokenizer is not None:
            # config.json belongs to the model; the tokenizer's own config sits beside it.
            tokenizer.save(tmp, write_config=False)
            tokenizer.config.to_json(tmp / TOKENIZER_CONFIG_FILE)
    return path


def _store_half(path: Path, keep: tuple[str, ...] = ()) -> None:
    """Rewrite a weights file with its float32 tensors as float16, except those whose names
    start with one of ``keep``."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for k, t in tensors.items():
        if t.dtype == torch.float32 and not k.startswith(keep):
            if t.numel() and t.abs().max() > torch.finfo(torch.float16).max:
                raise CheckpointError(f"{path}: {k} does not fit in float16")
            tensors[k] = t.half()
    metadata["stored_dtype"] = "float16"
    save_file(tensors, str(path), metadata=metadata)


def read_config(path: str | Path) -> tuple[str, dict[str, Any]]:
    """Return (kind, fields) of a checkpoint directory's ``config.json``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_dir():
        raise CheckpointError(
            f"{path} is a file, not a checkpoint directory"
            + (
                " (legacy .pt files load only via "
                "load_legacy_state_dict(..., allow_legacy_pt=True))"
                if path.suffix in {".pt", ".pth", ".bin", ".ckpt"}
                else ""
            )
        )
    cfg_file = path / CONFIG_FILE
    try:
        data = json.loads(cfg_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {CONFIG_FILE}: not a tessera checkpoint") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {cfg_file}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
        raise CheckpointError(f"{cfg_file} has no 'kind' field: not a tessera checkpoint")
    kind = data.pop("kind")
    return kind, data


def load_checkpoint(
    path: str | Path, *, kind: str | None = None, map_location: str = "cpu"
) -> LoadedCheckpoint:
    """Load any checkpoint directory; ``kind`` (optional) asserts what it must be."""
    path = Path(path)
    found_kind, fields = read_config(path)
    if kind is not None and found_kind != kind:
        raise CheckpointError(f"{path} holds a {found_kind!r} checkpoint, expected {kind!r}")
    spec = kind_spec(found_kind)
    try:
        config = spec.config_cls.from_dict(fields)
    except ConfigError as e:
        raise CheckpointError(f"{path / CONFIG_FILE}: {e}") from None
    if spec.load_dir is not None:
        return LoadedCheckpoint(found_kind, config, spec.load_dir(path), {})
    assert spec.build is not None
    model = spec.build(config)
    metadata = load_weights(model, path / WEIGHTS_FILE, map_location=map_location)
    model.config = config
    return LoadedCheckpoint(found_kind, config, model, metadata, _load_tokenizer(path))


def _load_tokenizer(path: Path) -> Any | None:
    """The tokenizer saved beside a model's weights, with its own config, if there is one."""
    if not (path / TOKENIZER_FILE).is_file():
        return None
    from tessera.config.text import TokenizerConfig
    from tessera.errors import TesseraError
    from tessera.text import TextTokenizer

    cfg_file = path / TOKENIZER_CONFIG_FILE
    try:
        cfg = TokenizerConfig.from_json(cfg_file) if cfg_file.is_file() else None
        return TextTokenizer.load(path / TOKENIZER_FILE, cfg)
    except TesseraError as e:
        raise CheckpointError(f"{path}: {e}") from None


def load(path: str | Path, *, kind: str | None = None, map_location: str = "cpu") -> Any:
    """Load a checkpoint directory and return its object (model with ``.config``, tokenizer...)."""
    return load_checkpoint(path, kind=kind, map_location=map_location).obj


def load_weights(model: Any, file: str | Path, *, map_location: str = "cpu") -> dict[str, str]:
    """Load ``model.safetensors`` into ``model`` strictly; return the file's metadata.

    Mismatches give one readable line (missing / unexpected keys, shape differences) instead
    of a wall of ``size mismatch`` errors; truncated or corrupt files name the file.
    """
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_model

    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"weights file not found: {file}")
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or truncated weights file {file}: {e}") from None
    _check_compatible(model, shapes, file)
    try:
        load_model(model, str(file), strict=True, device=map_location)
    except (SafetensorError, RuntimeError, OSError) as e:
        raise CheckpointError(
            f"cannot load weights from {file}: {str(e).splitlines()[0]}"
        ) from None
    return metadata


def _check_compatible(model: Any, shapes: dict[str, tuple[int, ...]], file: Path) -> None:
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    # Tied parameters appear under several names in state_dict but once in the file.
    missing = [k for k in expected if k not in shapes and not _is_tied_alias(model, k, shapes)]
    unexpected = [k for k in shapes if k not in expected]
    mismatched = [k for k in shapes if k in expected and shapes[k] != expected[k]]
    if not (missing or unexpected or mismatched):
        return
    parts = []
    if mismatched:
        k = mismatched[0]
        parts.append(
            f"{len(mismatched)} shape mismatch(es), e.g. {k!r}: "
            f"file {shapes[k]} vs config {expected[k]}"
        )
    if missing:
        parts.append(f"{len(missing)} missing key(s), e.g. {missing[0]!r}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), e.g. {unexpected[0]!r}")
    raise CheckpointError(f"{file} does not match its config: " + "; ".join(parts))


def _is_tied_alias(model: Any, key: str, shapes: dict[str, tuple[int, ...]]) -> bool:
    sd = model.state_dict(keep_vars=True)
    t = sd[key]
    return any(
        other in shapes and other != key and sd[other].data_ptr() == t.data_ptr() for other in sd
    )


def load_legacy_state_dict(path: str | Path, *, allow_legacy_pt: bool = False) -> dict[str, Any]:
    """Read a legacy ``.pt``/``.pth`` state dict — only when explicitly allowed, weights-only.

    Never falls back to full unpickling: a file that needs arbitrary objects is refused.
    """
    import pickle

    import torch

    path = Path(path)
    if not allow_legacy_pt:
        raise UnsafeCheckpointError(
            f"refusing to read pickle-based file {path}; pass allow_legacy_pt=True "
            "to load it weights-only"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    log.warning("loading legacy pickle-based checkpoint %s with weights_only=True", path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"{path} contains objects other than tensors; refused (weights-only load: {first})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"corrupt or truncated checkpoint file {path}: {e}") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    return obj


def shipped_dir(*parts: str) -> Path:
    """A folder of the checkpoints shipped inside the package: ``shipped_dir("pipeline")``
    is ``tessera/assets/shapes/pipeline`` (the DALL·E pipeline trained on ``shapes``)."""
    from importlib import resources

    return Path(str(resources.files("tessera") / "assets" / "shapes")).joinpath(*parts)

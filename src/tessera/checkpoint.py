"""Self-describing checkpoints: ``config.json`` + ``*.safetensors`` (+ ``tokenizer.json``).

One loader serves every kind. ``config.json`` names its ``kind``; the kind's registered config
class parses it strictly and its builder makes the object, whose weights then come from
``model.safetensors`` (nothing is unpickled). A legacy ``.pt`` state dict loads only through
:func:`load_legacy_state_dict` with ``allow_legacy_pt=True``, and then only with
``torch.load(weights_only=True)`` — never with a fallback to full unpickling.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tessera import __version__
from tessera.config.base import Config
from tessera.errors import CheckpointError, ConfigError, UnsafeCheckpointError

log = logging.getLogger("tessera.checkpoint")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"


@dataclasses.dataclass(frozen=True)
class KindSpec:
    """How to rebuild one kind of checkpoint.

    config_cls: the kind's :class:`Config` subclass.
    build: config -> object (an ``nn.Module`` whose weights come from ``model.safetensors``).
    load_dir: optional loader that reads the whole directory itself (e.g. tokenizers).
    """

    config_cls: type[Config]
    build: Callable[[Any], Any] | None = None
    load_dir: Callable[[Path], Any] | None = None


_KINDS: dict[str, KindSpec] = {}


def _tokenizer_spec() -> KindSpec:
    from tessera.config.text import TokenizerConfig
    from tessera.text.tokenizer import TextTokenizer

    return KindSpec(config_cls=TokenizerConfig, load_dir=TextTokenizer.load)


def _vae_spec() -> KindSpec:
    from tessera.config.vae import VAEConfig
    from tessera.vae.model import DiscreteVAE

    return KindSpec(config_cls=VAEConfig, build=DiscreteVAE)


def _dalle_spec() -> KindSpec:
    from tessera.config.dalle import DalleConfig
    from tessera.models.dalle import DALLE

    return KindSpec(config_cls=DalleConfig, build=DALLE)


def _clip_spec() -> KindSpec:
    from tessera.config.clip import CLIPConfig
    from tessera.models.clip import CLIP

    return KindSpec(config_cls=CLIPConfig, build=CLIP)


# Built-in kinds, built on first use so that loading one kind never imports the others.
_BUILTIN: dict[str, Callable[[], KindSpec]] = {
    "tokenizer": _tokenizer_spec,
    "vae": _vae_spec,
    "dalle": _dalle_spec,
    "clip": _clip_spec,
}


def register_kind(kind: str, spec: KindSpec) -> None:
    """Register (or replace) the loader of a checkpoint kind."""
    _KINDS[kind] = spec


def _kind_spec(kind: str) -> KindSpec:
    if kind not in _KINDS and kind in _BUILTIN:
        _KINDS[kind] = _BUILTIN[kind]()
    if kind not in _KINDS:
        known = ", ".join(sorted(set(_KINDS) | set(_BUILTIN)))
        raise CheckpointError(f"unknown checkpoint kind {kind!r} (known kinds: {known})")
    return _KINDS[kind]


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
) -> Path:
    """Write a checkpoint directory atomically (temporary directory, fsync, rename).

    model: an ``nn.Module``; saved with ``safetensors.torch.save_model`` so tied weights stay tied.
    tokenizer: a ``tessera.text.TextTokenizer``, written as ``tokenizer.json`` beside the weights.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"checkpoint directory already exists: {path} (pass overwrite=True)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / CONFIG_FILE).write_text(config.to_json(), encoding="utf-8")
        if model is not None:
            from safetensors.torch import save_model

            meta = {"format": "pt", "tessera_version": __version__, "kind": config.kind}
            meta.update(metadata or {})
            save_model(model, str(tmp / WEIGHTS_FILE), metadata=meta)
        if tokenizer is not None:
            # config.json belongs to the model; the tokenizer's own config sits beside it.
            tokenizer.save(tmp, write_config=False)
            tokenizer.config.to_json(tmp / TOKENIZER_CONFIG_FILE)
        for f in tmp.iterdir():
            fsync_path(f)
        if path.exists():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_path(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def fsync_path(p: Path) -> None:
    """fsync a file or directory (so a rename that follows is durable)."""
    fd = os.open(p, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    spec = _kind_spec(found_kind)
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

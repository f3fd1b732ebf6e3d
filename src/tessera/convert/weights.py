"""Reading released weights safely, and mapping their names with one-line errors.

Only two kinds of file are read: ``.safetensors`` (also sharded, with a
``*.safetensors.index.json``) and state dicts that ``torch.load(..., weights_only=True)``
accepts (tensors only). A file that holds pickled Python objects is refused: loading it would
run code.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from tessera.errors import CheckpointError, UnsafeCheckpointError

__all__ = [
    "check_state",
    "find_weights",
    "read_json",
    "read_state_dict",
    "rename_state",
]

_MAX_NAMED = 3
# file names a transformers / diffusers component folder keeps its weights under, best first
_WEIGHT_NAMES = (
    "model.safetensors",
    "diffusion_pytorch_model.safetensors",
    "model.safetensors.index.json",
    "diffusion_pytorch_model.safetensors.index.json",
    "pytorch_model.bin",
    "diffusion_pytorch_model.bin",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)


def named(keys: Iterable[str]) -> str:
    """``'a', 'b', 'c' (+N more)``: the first few of ``keys``, for a one-line message."""
    keys = list(keys)
    shown = ", ".join(repr(k) for k in keys[:_MAX_NAMED])
    return shown + (f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else "")


def read_json(path: str | Path) -> dict[str, Any]:
    """A JSON object from ``path``; a missing or broken file is a one-line error."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def find_weights(folder: str | Path) -> Path:
    """The weights file of a transformers / diffusers component folder (safetensors first)."""
    folder = Path(folder)
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p.name for p in folder.glob("*.safetensors")) if folder.is_dir() else []
    if len(found) == 1:
        return folder / found[0]
    raise CheckpointError(
        f"{folder}: no weights file (looked for {', '.join(_WEIGHT_NAMES[:2])}, "
        "a sharded *.safetensors.index.json or a weights-only pytorch_model.bin)"
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt or truncated safetensors file {path}: {e}") from None


def read_state_dict(path: str | Path, what: str = "weights") -> dict[str, torch.Tensor]:
    """A ``{name: tensor}`` state dict from a ``.safetensors`` file, a sharded safetensors
    index, a weights-only ``torch.save`` file (a Lightning checkpoint's ``state_dict`` entry is
    taken), or a component folder holding one of those. ``what`` names the file in errors.

    Pickled modules or any non-tensor object are refused (:class:`UnsafeCheckpointError`, with
    the one command that re-saves the tensors as safetensors in a trusted environment)."""
    path = Path(path)
    if path.is_dir():
        path = find_weights(path)
    if not path.is_file():
        raise CheckpointError(f"{what} file not found: {path}")
    if path.name.endswith(".safetensors.index.json"):
        index = read_json(path)
        shards = sorted(set((index.get("weight_map") or {}).values()))
        if not shards:
            raise CheckpointError(f"{path}: no 'weight_map' in the shard index")
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            if "/" in shard or "\\" in shard or shard.startswith("."):
                raise CheckpointError(f"{path}: shard name {shard!r} is not a plain file name")
            out.update(_read_safetensors(path.parent / shard))
        return out
    if path.suffix == ".safetensors":
        obj: Any = _read_safetensors(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UnsafeCheckpointError(
                f"{path} holds pickled Python objects, not just tensors; tessera never "
                "unpickles them. Save its tensors once, in an environment you trust: "
                'python -c "import torch; from safetensors.torch import save_file; '
                f"c = torch.load({str(path)!r}, map_location='cpu', weights_only=False); "
                "sd = c.get('state_dict', c); save_file({k: v.contiguous() for k, v in "
                f'sd.items()}}, {str(path.with_suffix(".safetensors"))!r})" -- then pass the '
                ".safetensors file"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot read {path} as a state dict: {first}") from None
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} non-tensor entries, e.g. {bad[0]!r}")
    if not obj:
        raise CheckpointError(f"{path}: the state dict is empty")
    return dict(obj)


def rename_state(
    sd: Mapping[str, torch.Tensor],
    rename: Callable[[str], str | None],
    *,
    what: str,
    ignore: Callable[[str], bool] = lambda k: False,
) -> dict[str, torch.Tensor]:
    """``{rename(k): v}``; keys ``ignore`` accepts are dropped, keys ``rename`` maps to None
    are unknown: one line names them."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in sd.items():
        if ignore(k):
            continue
        new = rename(k)
        if new is None:
            unknown.append(k)
        else:
            out[new] = v
    if unknown:
        raise CheckpointError(f"{what}: {len(unknown)} unknown key(s): {named(unknown)}")
    return out


def check_state(
    state: Mapping[str, torch.Tensor],
    model: torch.nn.Module,
    *,
    what: str,
    source_name: Callable[[str], str] = lambda k: k,
) -> None:
    """One line naming what is missing, unexpected or mis-shaped in ``state`` for ``model``
    (keys named as the source names them, through ``source_name``)."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in state if k in expected and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {named(source_name(k) for k in missing)}")
    if unexpected:
        problems.append(
            f"{len(unexpected)} unknown key(s): {named(source_name(k) for k in unexpected)}"
        )
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{len(mismatched)} shape mismatch(es), e.g. {source_name(k)!r}: "
            f"{tuple(state[k].shape)} vs {expected[k]} expected"
        )
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def load_checked(
    model: torch.nn.Module,
    state: Mapping[str, torch.Tensor],
    *,
    what: str,
    source_name: Callable[[str], str] = lambda k: k,
) -> torch.nn.Module:
    """:func:`check_state`, then a strict load (float tensors cast to the model's dtype)."""
    check_state(state, model, what=what, source_name=source_name)
    ref = model.state_dict()
    model.load_state_dict(
        {k: v.to(ref[k].dtype) if v.is_floating_point() else v for k, v in state.items()},
        strict=True,
    )
    return model

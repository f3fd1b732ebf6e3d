"""Atomic training checkpoints, with nothing pickled.

(An fsdp run writes ``dcp/`` -- torch's distributed checkpoint, resharded on load -- in
place of the model, EMA and optimizer files: see :func:`save_dcp_state`.)

Layout of ``run_dir/checkpoints/step-NNNNNNNN/``::

    model.safetensors      live weights           ema.safetensors     EMA weights
    optimizer.safetensors  AdamW moments          extra.safetensors   RNG / compressor tensors
    trainer.json           step, data position, schedules, scalers, RNG (python, numpy),
                           counters, optimizer hyper-parameters
    COMPLETE               written last: a directory without it is never loaded

A checkpoint is written into ``.step-NNNNNNNN.tmp-*``, every file fsynced, ``COMPLETE``
added, the directory renamed into place and the parent fsynced; only then are older
checkpoints pruned (keeping ``keep_last``), so a crash at any moment leaves the previous
complete checkpoint intact (reliability T2, T7).
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tessera.errors import CheckpointError
from tessera.io import atomic_dir

log = logging.getLogger("tessera.training")

CKPT_DIR = "checkpoints"
_NAME = re.compile(r"^step-(\d{8})$")
COMPLETE = "COMPLETE"


# -- RNG -------------------------------------------------------------------------------------
def capture_rng() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """This process's RNG states: (JSON part: python + numpy, tensor part: torch CPU/CUDA)."""
    version, internal, gauss = random.getstate()
    alg, keys, pos, has_gauss, cached = np.random.get_state()
    js = {
        "python": [version, list(internal), gauss],
        "numpy": [alg, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    return js, tensors


def restore_rng(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, internal, gauss = js["python"]
    random.setstate((version, tuple(internal), gauss))
    alg, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((alg, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = sorted(k for k in tensors if k.startswith("cuda."))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda])


# -- optimizer state without pickle ------------------------------------------------------------
def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    groups = [
        {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()}
        for g in sd["param_groups"]
    ]
    return tensors, {"param_groups": groups, "scalars": scalars}


def load_optimizer_tensors(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    for idx, sc in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(sc)
    groups = []
    for g in meta["param_groups"]:
        groups.append({k: (tuple(v) if k == "betas" else v) for k, v in g.items()})
    opt.load_state_dict({"state": state, "param_groups": groups})
    _match_param_layouts(opt)


def _match_param_layouts(opt: torch.optim.Optimizer) -> None:
    """Give every per-parameter state tensor its parameter's memory layout.

    Saved moments are contiguous (safetensors), but a channels-last parameter's moments were
    channels-last when created (``zeros_like``). The fused AdamW kernel walks parameter,
    gradient and moments as flat memory, so a contiguous moment beside a channels-last
    parameter pairs the wrong elements: resume stopped being bit-identical (and the moments
    of 3x3 convolutions were scrambled) once the fused kernel was adopted.
    """
    for p, st in opt.state.items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.shape == p.shape and v.stride() != p.stride():
                st[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)


# -- save / find / load ----------------------------------------------------------------------
def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CKPT_DIR


def save_state(
    run_dir: Path,
    step: int,
    *,
    model: nn.Module,
    ema: dict[str, torch.Tensor] | None,
    optimizer: torch.optim.Optimizer,
    meta: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor],
    keep_last: int,
) -> Path:
    """Write ``step-NNNNNNNN`` atomically, then prune all but the newest ``keep_last``."""
    from safetensors.torch import save_file, save_model

    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    # A re-save of the same step (e.g. after a signal) replaces it.
    with atomic_dir(final) as tmp:
        save_model(model, str(tmp / "model.safetensors"))
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.items()}, str(tmp / "ema.safetensors"))
        opt_tensors, opt_meta = optimizer_tensors(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        save_file(extra_tensors, str(tmp / "extra.safetensors"))
        payload = {**meta, "step": step, "optimizer": opt_meta}
        (tmp / "trainer.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        (tmp / COMPLETE).write_text("ok\n")
    for old in list_complete(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_complete(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = checkpoint_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.match(p.name) and (p / COMPLETE).is_file()]
    return sorted(found, key=lambda p: p.name)


def remove_stale(run_dir: Path) -> int:
    """Delete leftovers of interrupted writes (``.step-*.tmp-*``); returns how many."""
    root = checkpoint_dir(run_dir)
    n = 0
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".step-") and ".tmp-" in p.name:
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    return n


def read_state(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    """Read a checkpoint: (trainer.json, {file stem: tensors}); errors name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no {COMPLETE})")
    try:
        meta = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read {path / 'trainer.json'}: {e}") from None
    tensors: dict[str, dict[str, torch.Tensor]] = {}
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"training checkpoint file missing: {path / 'model.safetensors'}")
    for name in ("ema", "optimizer", "extra"):  # the model is loaded by load_model (ties)
        f = path / f"{name}.safetensors"
        if not f.exists():
            if name == "ema":
                continue
            raise CheckpointError(f"training checkpoint file missing: {f}")
        try:
            tensors[name] = load_file(str(f))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"corrupt or truncated checkpoint file {f}: {e}") from None
    return meta, tensors


# -- distributed checkpoints (FSDP: torch.distributed.checkpoint) ------------------------------
DCP_DIR = "dcp"


def is_dcp(path: Path) -> bool:
    """Whether a training checkpoint holds its tensors as a DCP directory (an fsdp run)."""
    return (Path(path) / DCP_DIR).is_dir()


def save_dcp_state(
    run_dir: Path,
    step: int,
    *,
    ctx: Any,
    app_state: dict[str, Any],
    meta: dict[str, Any],
    extra_tensors: dict[str, torch.Tensor],
    keep_last: int,
) -> Path | None:
    """Write ``step-NNNNNNNN`` of a sharded run; every rank calls it (collective).

    Layout: ``dcp/`` (torch's distributed checkpoint of ``app_state``: model, optimizer and
    EMA by parameter name, each rank writing its own shards, resharded on load to any world
    size) + ``extra.safetensors`` (every rank's RNG) + ``trainer.json`` + ``COMPLETE``. Rank 0
    owns the temporary directory: it is filled by all ranks, fsynced, completed and renamed
    into place exactly as :func:`save_state` does; older checkpoints are then pruned.
    Returns the path on rank 0, None elsewhere. ``ctx``: the run's ``DistContext``.
    """
    import torch.distributed.checkpoint as dcp
    from safetensors.torch import save_file

    root = checkpoint_dir(run_dir)
    final = root / f"step-{step:08d}"
    alone = not ctx.distributed  # one process: no collectives (and no warning about it)
    if not ctx.is_main:
        tmp = Path(ctx.all_gather_objects(None)[0])  # rank 0's temporary directory
        dcp.save(app_state, checkpoint_id=str(tmp / DCP_DIR))
        return None
    root.mkdir(parents=True, exist_ok=True)
    with atomic_dir(final) as tmp:
        ctx.all_gather_objects(str(tmp))
        # returns when every rank wrote its shards (rank 0 then writes the metadata)
        dcp.save(app_state, checkpoint_id=str(tmp / DCP_DIR), no_dist=alone)
        save_file(extra_tensors, str(tmp / "extra.safetensors"))
        payload = {**meta, "step": step, "format": "dcp"}
        (tmp / "trainer.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
        (tmp / COMPLETE).write_text("ok\n")
    for old in list_complete(run_dir)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_dcp_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A sharded checkpoint's ``trainer.json`` and ``extra.safetensors`` (the tensors in
    ``dcp/`` are loaded in place by the trainer); errors name the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / COMPLETE).is_file():
        raise CheckpointError(f"{path} is not a complete training checkpoint (no {COMPLETE})")
    if not (path / DCP_DIR / ".metadata").is_file():
        raise CheckpointError(f"training checkpoint file missing: {path / DCP_DIR / '.metadata'}")
    try:
        meta = json.loads((path / "trainer.json").read_text(encoding="utf-8"))
        extra = load_file(str(path / "extra.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from None
    return meta, extra

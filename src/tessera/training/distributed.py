"""Process groups, DDP and PowerSGD — a thin layer over torch.distributed.

Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); a plain
``python``/``tessera`` call is a single process. gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclasses.dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, world size and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def all_true(self, flag: bool) -> bool:
        """True iff ``flag`` is True on every rank (one all-reduce; a no-op alone)."""
        return self.all_true_each(flag)[0]

    def all_true_each(self, *flags: bool) -> tuple[bool, ...]:
        """:meth:`all_true` of each of several flags, in one all-reduce."""
        if not self.distributed:
            return flags
        dev = self._comm_device()
        t = torch.tensor([int(bool(f)) for f in flags], dtype=torch.int32, device=dev)
        dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return tuple(bool(v) for v in t.tolist())

    def all_gather_objects(self, obj: Any) -> list[Any]:
        """Gather one (trusted, in-process) Python object from every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, value: float) -> float:
        """Average a float over ranks (for logging)."""
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")


def init_distributed(*, timeout_s: float = 600.0) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout_s),  # collectives never hang forever
        )
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def wrap_ddp(
    model: nn.Module, ctx: DistContext, *, powersgd_rank: int = 0, powersgd_start_iter: int = 2
) -> tuple[nn.Module, Any]:
    """Wrap ``model`` in DDP when distributed; optionally register torch's PowerSGD hook.

    PowerSGD runs with error feedback and warm start on (as in the paper); the first
    ``powersgd_start_iter`` iterations use plain all-reduce. Returns (module, powersgd_state).
    """
    if not ctx.distributed:
        return model, None
    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    state = None
    if powersgd_rank > 0:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

        state = psgd.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=powersgd_rank,
            start_powerSGD_iter=powersgd_start_iter,
            use_error_feedback=True,
            warm_start=True,
            random_seed=0,
        )
        ddp.register_comm_hook(state, psgd.powerSGD_hook)
    return ddp, state


def powersgd_tensors(state: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a PowerSGDState into tensors (for safetensors) and JSON (iteration, RNG).

    Saved without pickle so that resuming restores the compressor exactly (error feedback,
    warm-start P/Q memories, the numpy RNG that draws new Q matrices).
    """
    tensors: dict[str, torch.Tensor] = {}
    for name in ("error_dict", "p_memory_dict", "q_memory_dict"):
        for k, v in getattr(state, name).items():
            tensors[f"{name}.{k}"] = v.detach().cpu().contiguous()
    alg, keys, pos, has_gauss, cached = state.rng.get_state()
    meta = {
        "iter": int(state.iter),
        "rng": [alg, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def load_powersgd_tensors(
    state: Any, tensors: dict[str, torch.Tensor], meta: dict[str, Any], device: torch.device
) -> None:
    """Inverse of :func:`powersgd_tensors`."""
    for name in ("error_dict", "p_memory_dict", "q_memory_dict"):
        d = getattr(state, name)
        d.clear()
        prefix = f"{name}."
        for k, v in tensors.items():
            if k.startswith(prefix):
                d[int(k[len(prefix) :])] = v.to(device)
    state.iter = int(meta["iter"])
    alg, keys, pos, has_gauss, cached = meta["rng"]
    state.rng.set_state((alg, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def compression_ratio(model: nn.Module, rank: int) -> float:
    """Fraction of gradient traffic PowerSGD saves, counted per 2-D+ parameter matrix.

    A (n, m) matrix sends n*m numbers uncompressed and (n + m) * rank with PowerSGD; 1-D
    tensors (biases, gains) go uncompressed. Returns 1 - compressed / uncompressed.
    """
    full = comp = 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        numel = p.numel()
        full += numel
        if p.ndim >= 2:
            n, m = p.shape[0], numel // p.shape[0]
            comp += min(numel, (n + m) * rank)
        else:
            comp += numel
    return 1.0 - comp / max(full, 1)

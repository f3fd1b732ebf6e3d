"""Process groups, DDP and PowerSGD — a thin layer over torch.distributed.

Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT); a plain
``python``/``tessera`` call is a single process. gloo on CPU, NCCL on CUDA.
"""

from __future__ import annotations

import atexit
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
    device: torch.device = dataclasses.field(default_factory=lambda: torch.device("cpu"))

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
        # torn down before the interpreter exits: a group left to static destructors can end
        # a finished run with "terminate called without an active exception" (SIGABRT)
        atexit.register(_destroy_group)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=device)


def _destroy_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(
    model: nn.Module, ctx: DistContext, *, powersgd_rank: int = 0, powersgd_start_iter: int = 2
) -> tuple[nn.Module, PowerSGDHook | None]:
    """Wrap ``model`` in DDP when distributed; optionally register torch's PowerSGD hook.

    PowerSGD runs with error feedback and warm start on (as in the paper); the first
    ``powersgd_start_iter`` iterations use plain all-reduce. Returns (module, powersgd hook).
    On gloo, PowerSGD gets a single gradient bucket: torch's hook waits on nested
    collectives inside future callbacks, which with two or more buckets deadlocks gloo's
    worker threads (forever: the collective timeout never starts).
    """
    if not ctx.distributed:
        return model, None
    ids = [ctx.local_rank] if ctx.device.type == "cuda" else None
    kw: dict[str, Any] = {}
    if powersgd_rank > 0 and dist.get_backend() == "gloo":
        kw["bucket_cap_mb"] = 1 << 20  # one bucket (see above)
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids, **kw)
    hook = None
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
        hook = PowerSGDHook(state, model)

        # DDP wants a plain function, unannotated or annotated with the real classes
        def powersgd_comm_hook(state, bucket):  # noqa: ANN001
            return hook(state, bucket)

        ddp.register_comm_hook(state, powersgd_comm_hook)
    return ddp, hook


@dataclasses.dataclass(frozen=True)
class _Slot:
    """Where one parameter's compressor memories sit in its bucket's flat memories."""

    name: str
    err: tuple[int, int]  # (offset, length) in the error-feedback tensor (the bucket buffer)
    p: tuple[int, int] | None  # in the warm-start P memory; None: sent uncompressed
    q: tuple[int, int] | None


class PowerSGDHook:
    """torch's ``powerSGD_hook`` with its memories kept per parameter across re-bucketing.

    torch keys error feedback and the warm-start P/Q memories by bucket index, laid out in
    the bucket's parameter order. DDP re-buckets after the first synchronised iteration of
    every process (one bucket in parameter order, then buckets in gradient-ready order), so
    memories restored from a checkpoint would be added to the wrong parameters after a
    resume (or fail on a size mismatch). This wrapper remembers each bucket's layout; when a
    bucket's parameters change it re-slices the memories parameter by parameter (exact: the
    hook's maths is per parameter), and checkpoints store them by parameter name.
    """

    def __init__(self, state: Any, model: nn.Module) -> None:
        self.state = state
        self._names = {id(p): n for n, p in model.named_parameters()}
        self._layouts: dict[int, tuple[tuple[int, ...], list[_Slot]]] = {}
        self._loose: dict[str, torch.Tensor] = {}  # "err|p|q.<param>" not yet in a bucket
        self._seen: set[int] = set()  # buckets already hooked in this iteration

    def __call__(self, state: Any, bucket: Any) -> torch.futures.Future[torch.Tensor]:
        from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

        index = bucket.index()
        if state.iter >= state.start_powerSGD_iter:  # the memories are in use
            key = tuple(id(p) for p in bucket.parameters())
            known = self._layouts.get(index)
            if known is None or known[0] != key:
                if known is not None:
                    # DDP re-bucketed: back to per-parameter memories, except for buckets
                    # already hooked in this iteration (new layout, maybe still in flight)
                    self._scatter_all(keep=self._seen)
                slots = self._slots(bucket)
                self._gather(index, slots, bucket.buffer())
                self._layouts[index] = (key, slots)
        self._seen.add(index)
        if bucket.is_last():
            self._seen.clear()
        return psgd.powerSGD_hook(state, bucket)

    def _slots(self, bucket: Any) -> list[_Slot]:
        """The layout torch's hook uses: error = the bucket buffer; P/Q = compressed
        matrices grouped by shape (first appearance), bucket order within a group."""
        from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import _should_compress

        st, base = self.state, bucket.buffer().storage_offset()
        groups: dict[tuple[int, int], list[int]] = {}
        info = []
        for i, (p, g) in enumerate(zip(bucket.parameters(), bucket.gradients(), strict=True)):
            n = g.shape[0]
            m = g.numel() // n
            r = min(n, m, st.matrix_approximation_rank)
            if _should_compress(n, m, r, st.min_compression_rate)[0]:
                groups.setdefault((n, m), []).append(i)
            info.append((self._names[id(p)], (g.storage_offset() - base, g.numel()), r))
        pq: dict[int, tuple[tuple[int, int], tuple[int, int]]] = {}
        p_off = q_off = 0
        for (n, m), members in groups.items():
            for i in members:
                r = info[i][2]
                pq[i] = ((p_off, n * r), (q_off, m * r))
                p_off += n * r
                q_off += m * r
        return [_Slot(name, err, *pq.get(i, (None, None))) for i, (name, err, _) in enumerate(info)]

    def _scatter_all(self, keep: set[int] | None = None) -> None:
        """Move the memories of every bucket but ``keep`` into per-parameter tensors."""
        st = self.state
        for index, (_, slots) in list(self._layouts.items()):
            if keep and index in keep:
                continue
            del self._layouts[index]
            err = st.error_dict.pop(index, None)
            pm, qm = st.p_memory_dict.pop(index, None), st.q_memory_dict.pop(index, None)
            for s in slots:
                if err is not None:
                    self._loose[f"err.{s.name}"] = err.narrow(0, *s.err).clone()
                if pm is not None and s.p is not None:
                    self._loose[f"p.{s.name}"] = pm.narrow(0, *s.p).clone()
                    self._loose[f"q.{s.name}"] = qm.narrow(0, *s.q).clone()

    def _gather(self, index: int, slots: list[_Slot], buf: torch.Tensor) -> None:
        """Assemble bucket ``index``'s memories from ``self._loose`` (what is missing is
        left to torch: a zero error, fresh random Q matrices)."""
        st, loose = self.state, self._loose
        if any(f"err.{s.name}" in loose for s in slots):
            err = torch.zeros(buf.numel(), dtype=buf.dtype, device=buf.device)
            for s in slots:
                if f"err.{s.name}" in loose:
                    err.narrow(0, *s.err).copy_(loose.pop(f"err.{s.name}"))
            st.error_dict[index] = err
        comp = [s for s in slots if s.p is not None]
        if comp and all(f"p.{s.name}" in loose for s in comp):
            pm = torch.empty(sum(s.p[1] for s in comp), dtype=buf.dtype, device=buf.device)
            qm = torch.empty(sum(s.q[1] for s in comp), dtype=buf.dtype, device=buf.device)
            for s in comp:
                pm.narrow(0, *s.p).copy_(loose.pop(f"p.{s.name}"))
                qm.narrow(0, *s.q).copy_(loose.pop(f"q.{s.name}"))
            st.p_memory_dict[index], st.q_memory_dict[index] = pm, qm

    def reset(self) -> None:
        """Forget the error feedback and P/Q memories (after a skipped step: a non-finite
        gradient went through the hook and poisoned them on every rank, so every later
        step would be non-finite too). Q matrices are redrawn from the shared RNG."""
        for d in (self.state.error_dict, self.state.p_memory_dict, self.state.q_memory_dict):
            d.clear()
        self._layouts.clear()
        self._loose.clear()
        self._seen.clear()

    def per_parameter(self) -> dict[str, torch.Tensor]:
        """All memories by parameter: ``err.<name>``, ``p.<name>``, ``q.<name>``."""
        self._scatter_all()  # the next call re-assembles the buckets (same layout: exact)
        return dict(self._loose)


def powersgd_tensors(hook: PowerSGDHook) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split a PowerSGD hook's state into tensors (for safetensors) and JSON (iteration, RNG).

    Saved without pickle, per parameter name (not per DDP bucket, whose layout changes), so
    that resuming restores the compressor exactly: this rank's error feedback, the warm-start
    P/Q memories, the numpy RNG that draws new Q matrices.
    """
    tensors = {k: v.detach().cpu().contiguous() for k, v in hook.per_parameter().items()}
    alg, keys, pos, has_gauss, cached = hook.state.rng.get_state()
    meta = {
        "iter": int(hook.state.iter),
        "rng": [alg, keys.tolist(), int(pos), int(has_gauss), float(cached)],
    }
    return tensors, meta


def load_powersgd_tensors(
    hook: PowerSGDHook,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    device: torch.device,
) -> None:
    """Inverse of :func:`powersgd_tensors` (the buckets are filled at their next use)."""
    st = hook.state
    for d in (st.error_dict, st.p_memory_dict, st.q_memory_dict):
        d.clear()
    hook._layouts.clear()
    hook._loose = {k: v.to(device) for k, v in tensors.items()}
    st.iter = int(meta["iter"])
    alg, keys, pos, has_gauss, cached = meta["rng"]
    st.rng.set_state((alg, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def compression_ratio(model: nn.Module, rank: int, min_compression_rate: float = 2.0) -> float:
    """Fraction of gradient traffic PowerSGD saves (after its warm-up), by torch's rule.

    Each parameter is viewed as an (n, m) matrix (``shape[0]`` rows, as the hook does) and
    sent as (n + m) * r numbers, r = min(n, m, rank), when that is at least
    ``min_compression_rate`` (torch's default 2) times smaller than n * m; otherwise (and
    always for biases and gains) uncompressed. Returns 1 - sent / uncompressed.
    """
    full = comp = 0
    for p in model.parameters():
        if not p.requires_grad:
            continue
        numel = p.numel()
        full += numel
        n = p.shape[0] if p.ndim else 1
        m = numel // max(n, 1)
        small = (n + m) * min(n, m, rank)
        comp += small if small * min_compression_rate < numel else numel
    return 1.0 - comp / max(full, 1)


def wrap_fsdp(
    model: nn.Module,
    ctx: DistContext,
    *,
    precision: str = "fp32",
    units: list[nn.Module] | None = None,
) -> nn.Module:
    """Shard ``model`` in place with FSDP2 (``torch.distributed.fsdp.fully_shard``).

    Each of ``units`` (default: the model's ``fsdp_units()``, e.g. the transformer blocks) is
    its own FSDP unit, then the root takes what is left (embeddings, tied output tables,
    norms): only one unit's full parameters exist at a time in forward and backward.
    bf16 / fp16 use a ``MixedPrecisionPolicy`` (parameters all-gathered and computed in 16
    bits, gradients reduced and kept in fp32, master weights fp32); fp32 uses none. Works on
    the CPU with gloo (bf16 included) and on CUDA with NCCL. Alone (world size 1) the model
    is returned unwrapped. Parameters become ``DTensor`` shards: the returned module is
    ``model`` itself (its class swapped for an FSDP subclass).
    """
    if not ctx.distributed:
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    if units is None:
        getter = getattr(model, "fsdp_units", None)
        if getter is None:
            raise TypeError(
                f"{type(model).__name__} has no fsdp_units(): say which blocks to shard"
            )
        units = list(getter())
    mesh = init_device_mesh(ctx.device.type, (ctx.world_size,))
    mp = MixedPrecisionPolicy()
    if precision in ("bf16", "fp16"):
        low = torch.bfloat16 if precision == "bf16" else torch.float16
        mp = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
    for unit in units:
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    # the root's tables are needed again at the start of backward (the tied output layer)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model

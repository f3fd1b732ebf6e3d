"""Multi-process trainer scenarios for ``tests/integration/test_ddp.py`` (gloo on CPU).

Launched by torchrun; every rank runs the scenarios of one phase in order and writes what it
saw into ``--out`` (``rank<R>.json`` plus ``<scenario>.rank<R>.safetensors`` final weights)::

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        tests/helpers/ddp_worker.py --out DIR --phase first|resume

Phase ``first``:
  ddp       plain DDP, noise-free objective, no dropout (compared with one process on the
            union of the ranks' slices); rank 0 trains into ``ddp/``, rank 1 into
            ``ddp_rank1/`` so that anything rank 1 writes is visible.
  nan       step 5: rank 1's loss is NaN (its gradients are finite); step 8: rank 1's
            gradients are NaN. Both ranks must skip both steps.
  psgd_ref  PowerSGD (rank 1), the toy objective (dropout, torch RNG noise), 30 steps.
  psgd_cut  the same run, but rank 1 alone gets SIGTERM during step 10: both ranks must
            agree to stop after step 10 (checkpoint at 10).
  psgd_nan  PowerSGD, NaN gradients on rank 1 at step 6: skipped once, then trains on.
  remap     PowerSGDHook driven directly with several fake buckets that change layout.
Phase ``resume``:
  psgd_cut  a fresh launch continues the cut run to step 30 from its checkpoint.

The module is also imported by the test for :func:`exact_objective` and :class:`UnionBatches`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `helpers` when run as a script

from helpers import toy_training as toy

WORLD = 2
BATCH = 4  # per rank; the single-process reference uses WORLD * BATCH
PSGD_RANK = 1
CUT_AT = 10  # psgd_cut stops after this step in phase "first"
NAN_LOSS_STEP, NAN_GRAD_STEP = 5, 8  # 1-based steps poisoned on rank 1 in scenario "nan"
PSGD_NAN_STEP = 6  # NaN gradients on rank 1 in scenario "psgd_nan" (PowerSGD active)


def exact_objective(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict]:
    """The toy MSE without the RNG noise, so that one process and N ranks see the same sums."""
    x, y = batch
    loss = ((model(x) - y) ** 2).mean()
    return loss, {}


class UnionBatches:
    """The concatenation of every rank's slice (rank order) of the toy's global batches."""

    def __init__(self, batch_size: int, world_size: int) -> None:
        self.parts = [
            toy.make_batches(batch_size, rank=r, world_size=world_size) for r in range(world_size)
        ]

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(next(p) for p in self.parts), strict=True)
        return torch.cat(xs), torch.cat(ys)

    def state_dict(self) -> dict[str, int]:
        return self.parts[0].state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        for p in self.parts:
            p.load_state_dict(state)


def ddp_config(**kw: Any) -> Any:
    """The config of scenario ``ddp`` (and of its single-process reference)."""
    return toy.train_config(**{"steps": 20, "batch_size": BATCH, "checkpoint_every": 10, **kw})


def build_exact(run_dir: Path, ctx: Any = None, *, single: bool = False, **kw: Any) -> Any:
    """A trainer for the exact comparison: no dropout, no noise; ``single`` = one process
    seeing the union of the ``WORLD`` ranks' slices."""
    from tessera.training.trainer import Trainer

    torch.manual_seed(0)
    cfg = ddp_config(**kw)
    model = toy.ToyModel(toy.ToyConfig())
    model.drop.p = 0.0
    if single:
        batches = UnionBatches(cfg.batch_size, WORLD)
        cfg = cfg.replace(batch_size=WORLD * cfg.batch_size)
    else:
        batches = toy.make_batches(cfg.batch_size, rank=ctx.rank, world_size=ctx.world_size)
    return Trainer(
        model=model,
        objective=exact_objective,
        batches=batches,
        config=cfg,
        run_dir=run_dir,
        model_config=toy.ToyConfig(),
        ctx=ctx,
        progress=False,
    )


def record_steps(trainer: Any, steps: list[dict]) -> None:
    """Log (step, local loss, skipped, PowerSGD iteration before the step) of every step."""
    inner = trainer._train_step

    def wrapped() -> tuple[float, dict, int]:
        psgd_iter = None if trainer.powersgd is None else int(trainer.powersgd.state.iter)
        loss, metrics, n = inner()
        steps.append(
            {
                "step": trainer.step + 1,
                "loss": loss,
                "skipped": metrics["skipped"],
                "psgd_iter": psgd_iter,
            }
        )
        return loss, metrics, n

    trainer._train_step = wrapped


def save_weights(trainer: Any, path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {f"model.{k}": v.detach().clone() for k, v in trainer.model.state_dict().items()}
    if trainer.ema is not None:
        tensors.update({f"ema.{k}": v.clone() for k, v in trainer.ema.state_dict().items()})
    save_file(tensors, str(path))


def run_scenario(name: str, trainer: Any, out: Path, rank: int, warnings: list[str]) -> dict:
    steps: list[dict] = []
    record_steps(trainer, steps)
    first_warning = len(warnings)
    result = trainer.fit()
    save_weights(trainer, out / f"{name}.rank{rank}.safetensors")
    info: dict[str, Any] = {
        "steps": steps,
        "step": result.step,
        "skipped_steps": result.skipped_steps,
        "interrupted": result.interrupted,
        "resumed_from": result.resumed_from,
        "extra": result.extra,
        "warnings": warnings[first_warning:],
    }
    if trainer.powersgd is not None:
        rate, before, after = trainer.powersgd.state.compression_stats()
        info["hook_stats"] = {"rate": float(rate), "before": int(before), "after": int(after)}
    return info


def phase_first(ctx: Any, out: Path, warnings: list[str]) -> dict:
    rank = ctx.rank
    res: dict[str, Any] = {}
    # -- plain DDP, exact objective ----------------------------------------------------------
    run_dir = out / ("ddp" if rank == 0 else "ddp_rank1")
    res["ddp"] = run_scenario("ddp", build_exact(run_dir, ctx), out, rank, warnings)

    # -- non-finite on one rank only -----------------------------------------------------------
    t = build_exact(out / "nan", ctx, steps=10)
    before: dict[int, dict] = {}

    def poisoned(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict]:
        loss, m = exact_objective(model, batch, step)
        if step + 1 in (NAN_LOSS_STEP, NAN_GRAD_STEP) and step not in before:
            before[step] = {k: v.clone() for k, v in t.model.state_dict().items()}
        if rank == 1 and step + 1 == NAN_LOSS_STEP:
            loss = loss + float("nan")  # the loss is NaN, the gradients stay finite
        if rank == 1 and step + 1 == NAN_GRAD_STEP:
            loss = loss * float("nan")  # NaN gradients (DDP averages them into rank 0's)
        return loss, m

    t.objective = poisoned
    inner_step = t._train_step
    unchanged: dict[str, bool] = {}

    def check_step() -> tuple[float, dict, int]:
        s = t.step
        r = inner_step()
        if s in before:
            after = t.model.state_dict()
            unchanged[str(s + 1)] = all(torch.equal(before[s][k], after[k]) for k in after)
        return r

    t._train_step = check_step
    res["nan"] = run_scenario("nan", t, out, rank, warnings)
    res["nan"]["unchanged"] = unchanged

    # -- PowerSGD: uninterrupted, then cut by a signal on rank 1 only ------------------------
    res["psgd_ref"] = run_scenario(
        "psgd_ref", build_psgd(out / "psgd_ref", ctx), out, rank, warnings
    )
    t = build_psgd(out / "psgd_cut", ctx)
    inner = t.objective
    sent: list[int] = []

    def signalled(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict]:
        if rank == 1 and step + 1 == CUT_AT and not sent:
            sent.append(step)
            os.kill(os.getpid(), signal.SIGTERM)  # as if only this rank got the signal
        return inner(model, batch, step)

    t.objective = signalled
    res["psgd_cut"] = run_scenario("psgd_cut", t, out, rank, warnings)
    # -- PowerSGD and a NaN gradient on rank 1: its memories are poisoned, then reset ------
    t = build_psgd(out / "psgd_nan", ctx, steps=12)
    inner = t.objective

    def nan_grads(model: nn.Module, batch: Any, step: int) -> tuple[torch.Tensor, dict]:
        loss, m = inner(model, batch, step)
        return (loss * float("nan") if rank == 1 and step + 1 == PSGD_NAN_STEP else loss), m

    t.objective = nan_grads
    res["psgd_nan"] = run_scenario("psgd_nan", t, out, rank, warnings)
    res["remap"] = remap_check(ctx)
    return res


class FakeBucket:
    """Just enough of ``dist.GradBucket`` for the PowerSGD hook: views into one buffer."""

    def __init__(self, index: int, params: list, grads: list, last: bool) -> None:
        self._index, self._params, self._last = index, params, last
        self._buf = torch.cat([g.reshape(-1) for g in grads])
        self._views, off = [], 0
        for g in grads:
            self._views.append(self._buf[off : off + g.numel()].view_as(g))
            off += g.numel()

    def index(self) -> int:
        return self._index

    def parameters(self) -> list:
        return self._params

    def gradients(self) -> list:
        return self._views

    def buffer(self) -> torch.Tensor:
        return self._buf

    def is_last(self) -> bool:
        return self._last


def remap_check(ctx: Any) -> dict[str, bool]:
    """PowerSGDHook across a DDP re-bucketing, with several buckets (gloo cannot run those
    through DDP: see wrap_ddp): two buckets A, then one bucket B in another order, must give
    the same gradients and memories as A, A; in-process and through a save / load."""
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd

    from tessera.training.distributed import (
        PowerSGDHook,
        load_powersgd_tensors,
        powersgd_tensors,
    )

    shapes = {"p1": (16, 8), "b1": (16,), "p2": (12, 16), "p3": (12, 16), "b3": (12,)}
    params = nn.ParameterDict({k: nn.Parameter(torch.zeros(v)) for k, v in shapes.items()})
    layout_a = [["b3", "p3", "p2"], ["b1", "p1"]]
    layout_b = [["p1", "b1", "p2", "p3", "b3"]]

    def new_hook() -> PowerSGDHook:
        state = psgd.PowerSGDState(
            process_group=None,
            matrix_approximation_rank=2,
            start_powerSGD_iter=2,
            use_error_feedback=True,
            warm_start=True,
            random_seed=0,
        )
        state.iter = 2
        return PowerSGDHook(state, params)

    def call(hook: PowerSGDHook, layout: list[list[str]], it: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(1000 * it + ctx.rank)
        grads = {k: torch.randn(v, generator=gen) for k, v in shapes.items()}
        out = {}
        for i, names in enumerate(layout):
            bucket = FakeBucket(
                i, [params[n] for n in names], [grads[n] for n in names], i == len(layout) - 1
            )
            hook(hook.state, bucket).wait()
            out.update({n: v.clone() for n, v in zip(names, bucket.gradients(), strict=True)})
        return out

    def same(a: dict, b: dict) -> bool:
        return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    ref = new_hook()
    call(ref, layout_a, 1)
    out_ref = call(ref, layout_a, 2)
    mem_ref = ref.per_parameter()
    rebucketed = new_hook()
    call(rebucketed, layout_a, 1)
    out_re = call(rebucketed, layout_b, 2)
    first = new_hook()
    call(first, layout_a, 1)
    tensors, meta = powersgd_tensors(first)
    resumed = new_hook()
    load_powersgd_tensors(resumed, tensors, meta, torch.device("cpu"))
    out_res = call(resumed, layout_b, 2)
    return {
        "memories_per_param": sorted(mem_ref)
        == sorted(
            f"{kind}.{n}"
            for n in shapes
            for kind in ("err", "p", "q")
            if n[0] == "p" or kind == "err"
        ),
        "rebucketed_out": same(out_ref, out_re),
        "rebucketed_memories": same(mem_ref, rebucketed.per_parameter()),
        "resumed_out": same(out_ref, out_res),
        "resumed_memories": same(mem_ref, resumed.per_parameter()),
    }


def build_psgd(run_dir: Path, ctx: Any, steps: int = 30) -> Any:
    return toy.build_trainer(
        run_dir,
        ctx=ctx,
        steps=steps,
        checkpoint_every=5,
        powersgd_rank=PSGD_RANK,
        powersgd_start_iter=2,
    )


def phase_resume(ctx: Any, out: Path, warnings: list[str]) -> dict:
    t = build_psgd(out / "psgd_cut", ctx)
    return {"psgd_resumed": run_scenario("psgd_resumed", t, out, ctx.rank, warnings)}


class _ListHandler(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(record.getMessage())


def main(argv: list[str] | None = None) -> None:
    from tessera.training.distributed import init_distributed

    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--phase", choices=("first", "resume"), required=True)
    p.add_argument("--timeout", type=float, default=30.0, help="collective timeout (s)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    warnings: list[str] = []
    logging.getLogger("tessera.training").addHandler(_ListHandler(warnings))
    ctx = init_distributed(timeout_s=args.timeout)
    assert ctx.world_size == WORLD, ctx
    try:
        res = (phase_first if args.phase == "first" else phase_resume)(ctx, out, warnings)
        (out / f"{args.phase}.rank{ctx.rank}.json").write_text(json.dumps(res, indent=1))
    finally:
        torch.distributed.destroy_process_group()
    print(f"rank {ctx.rank}: phase {args.phase} done", flush=True)
    # Skip the interpreter's teardown: with several DDP + PowerSGD models in one process, a
    # gloo thread can still be releasing a PowerSGD future callback (it needs the GIL) when
    # Python finalizes, and the process aborts ("terminate called without an active
    # exception", SIGABRT in pt_gloo_runloop) after all the work is done and written.
    os._exit(0)


if __name__ == "__main__":
    main()

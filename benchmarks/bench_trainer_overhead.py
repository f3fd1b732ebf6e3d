"""The generic trainer's overhead over a bare PyTorch loop: same tiny model, same data, same
steps, same optimiser (AdamW with the paper's parameter groups), same LR schedule, the same
gradient clipping, fp32, no EMA (``--ema`` puts it in both). Goal: <= 3% slower. Prints one
JSON line.

    python benchmarks/bench_trainer_overhead.py [--steps 300] [--repeats 7] [--threads 2]

The two are interleaved (bare, trainer, bare, ...) and their medians compared. The trainer
is timed around ``fit()`` (pre-flight, resume scan, every step with its metrics.jsonl line);
its one checkpoint, written after the last step, is reported apart (``trainer_ckpt_s``) and
``overhead_with_ckpt_pct`` includes it. ``fixed_overhead_us_per_step`` is the same
comparison on a 4-wide model on one thread (nearly no compute, so far less sensitive to a
busy machine): the trainer's own cost per step, also as a share of a bare step of the real
model (``fixed_overhead_pct``). ``--profile`` prints the trainer's top costs.

Contention guard (as in bench_vae.py): a pair during which other processes used more than
``--max-foreign`` of the machine's CPU is discarded and re-run after waiting for quiet;
``discarded_pairs`` and ``foreign_cpu_frac_max`` (of the kept pairs) report it. With two
OpenMP threads on a 2-core machine, any competing process swamps a 3% difference.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

from _common import _machine_busy_s, _own_cpu_s  # run as benchmarks/<script>.py

WIDTH, DEPTH, BATCH, N_BATCHES = 256, 4, 64, 32
TINY = 4  # width and batch of the model that measures the fixed per-step cost
T = TypeVar("T")


def make_model(seed: int, width: int = WIDTH) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(DEPTH):
        layers.append(nn.Linear(width, width))
        if i < DEPTH - 1:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


def make_data(width: int = WIDTH, batch: int = BATCH) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(batch, width, generator=g), torch.randn(batch, width, generator=g))
        for _ in range(N_BATCHES)
    ]


def objective(model: nn.Module, batch: tuple, step: int) -> tuple[torch.Tensor, dict]:
    x, y = batch
    return nn.functional.mse_loss(model(x), y), {}


def config(steps: int, ema: bool):
    from tessera.config.training import TrainConfig

    return TrainConfig(
        steps=steps,
        batch_size=BATCH,
        lr=1e-3,
        lr_end=1e-5,
        warmup_steps=10,
        lr_schedule="warmup_cosine",
        grad_clip=4.0,
        ema_decay=0.999 if ema else 0.0,
        precision="fp32",
        checkpoint_every=steps + 1,  # no periodic checkpoint; fit() still saves at the end
        keep_last=1,
    )


def bare(data: list, cfg, seed: int) -> float:
    """The loop a user would write by hand."""
    from tessera.training.ema import EMA
    from tessera.training.optim import build_adamw
    from tessera.training.trainer import learning_rate

    model = make_model(seed, data[0][0].shape[1])
    opt = build_adamw(model, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    ema = EMA(model, decay=cfg.ema_decay, every=cfg.ema_every) if cfg.ema_decay else None
    params = list(model.parameters())
    t0 = time.perf_counter()
    for step in range(cfg.steps):
        lr = learning_rate(cfg, step)
        for g in opt.param_groups:
            g["lr"] = lr
        loss, _ = objective(model, data[step % len(data)], step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        if ema is not None:
            ema.update(model, step)
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def trainer_run(data: list, cfg, seed: int, run_dir: Path) -> tuple[float, float, object]:
    """(seconds in fit() without its checkpoint, seconds of the checkpoint, the trainer)."""
    from tessera.training.data import EpochBatches
    from tessera.training.trainer import Trainer

    trainer = Trainer(
        model=make_model(seed, data[0][0].shape[1]),
        objective=objective,
        batches=EpochBatches(lambda epoch: iter(data)),
        config=cfg,
        run_dir=run_dir,
        resume="none",
        progress=False,
    )
    saving = {"s": 0.0}
    inner = trainer._save

    def timed_save():
        t = time.perf_counter()
        try:
            return inner()
        finally:
            saving["s"] += time.perf_counter() - t

    trainer._save = timed_save
    t0 = time.perf_counter()
    trainer.fit()
    total = time.perf_counter() - t0
    return total - saving["s"], saving["s"], trainer


def profile(data: list, cfg, seed: int) -> None:
    import cProfile
    import pstats

    with tempfile.TemporaryDirectory() as d:
        prof = cProfile.Profile()
        prof.enable()
        trainer_run(data, cfg, seed, Path(d) / "run")
        prof.disable()
    pstats.Stats(prof, stream=sys.stderr).sort_stats("tottime").print_stats(25)


def foreign_share(fn: Callable[[], T]) -> tuple[T, float | None]:
    """Run ``fn``; also return the share of the machine's CPU other processes used meanwhile."""
    t, busy, own = time.perf_counter(), _machine_busy_s(), _own_cpu_s()
    out = fn()
    wall, busy2, own2 = time.perf_counter() - t, _machine_busy_s(), _own_cpu_s()
    if busy is None or busy2 is None or wall <= 0:
        return out, None
    return out, max(0.0, (busy2 - busy) - (own2 - own)) / (wall * (os.cpu_count() or 1))


def wait_quiet(max_wait_s: float, threshold: float, window_s: float = 2.0) -> None:
    """Sleep until other processes use < ``threshold`` of the machine over ``window_s``."""
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        _, share = foreign_share(lambda: time.sleep(window_s))
        if share is None or share < threshold:
            return


def pairs(args: argparse.Namespace, data: list, cfg, tag: str) -> tuple[list, dict]:
    """``args.repeats`` (bare, trainer, checkpoint) timings, interleaved, alternating which
    goes first; a pair during which other processes used more than ``args.max_foreign`` of
    the CPU is re-run after waiting for quiet (``args.retries`` times at most)."""
    out, shares, discarded = [], [], 0
    with tempfile.TemporaryDirectory() as d:
        for i in range(args.repeats):
            for attempt in range(args.retries + 1):

                def pair(i: int = i, attempt: int = attempt) -> tuple[float, float, float]:
                    run_dir = Path(d) / f"{tag}{i}-{attempt}"
                    if i % 2:
                        t, c, _ = trainer_run(data, cfg, i, run_dir)
                        return bare(data, cfg, seed=i), t, c
                    b = bare(data, cfg, seed=i)
                    t, c, _ = trainer_run(data, cfg, i, run_dir)
                    return b, t, c

                timings, share = foreign_share(pair)
                if share is None or share <= args.max_foreign or attempt == args.retries:
                    break
                discarded += 1
                wait_quiet(args.wait_s, args.max_foreign)
            out.append(timings)
            if share is not None:
                shares.append(share)
    info = {"discarded_pairs": discarded}
    if shares:
        info["foreign_cpu_frac_max"] = round(max(shares), 3)
    return out, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ema", action="store_true", help="EMA 0.999 every step, in both loops")
    p.add_argument("--profile", action="store_true", help="cProfile one trainer run (stderr)")
    p.add_argument("--tiny-steps", type=int, default=1000, help="steps of the tiny-model pairs")
    p.add_argument("--max-foreign", type=float, default=0.05, help="contention guard (share)")
    p.add_argument("--retries", type=int, default=3, help="re-runs of one contaminated pair")
    p.add_argument("--wait-s", type=float, default=60.0, help="longest wait for quiet per retry")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    # the trainer turns this on (config.deterministic, for exact resume): both run under it
    torch.use_deterministic_algorithms(True)
    cfg, data = config(args.steps, args.ema), make_data()
    if args.profile:
        profile(data, cfg, seed=0)
    bare(data, cfg.replace(steps=20), seed=0)  # warm-up: allocator, kernels, imports
    with tempfile.TemporaryDirectory() as d:
        trainer_run(data, cfg.replace(steps=20), 0, Path(d) / "warm")
    wait_quiet(args.wait_s, args.max_foreign)
    main_pairs, guard = pairs(args, data, cfg, "run")
    bare_s, trainer_s, ckpt_s = zip(*main_pairs, strict=True)
    b, t, c = (statistics.median(x) for x in (bare_s, trainer_s, ckpt_s))
    # the fixed cost per step, nearly free of compute (and so of the machine's load)
    tiny_cfg = cfg.replace(steps=args.tiny_steps)
    torch.set_num_threads(1)  # 4-wide ops: threads only add synchronisation
    tiny_pairs, tiny_guard = pairs(args, make_data(TINY, TINY), tiny_cfg, "tiny")
    torch.set_num_threads(args.threads)
    fixed_us = 1e6 * statistics.median(t - b for b, t, _ in tiny_pairs) / args.tiny_steps
    result = {
        "benchmark": "trainer_overhead",
        "steps": args.steps,
        "bare_s_median": round(b, 4),
        "trainer_s_median": round(t, 4),
        "overhead_pct": round(100 * (t / b - 1), 2),
        "repeats": args.repeats,
        "trainer_ckpt_s": round(c, 4),
        "overhead_with_ckpt_pct": round(100 * ((t + c) / b - 1), 2),
        "bare_ms_per_step": round(1000 * b / args.steps, 3),
        "fixed_overhead_us_per_step": round(fixed_us, 1),
        "fixed_overhead_pct": round(100 * fixed_us * 1e-6 / (b / args.steps), 2),
        "pairwise_overhead_pct": sorted(round(100 * (ti / bi - 1), 2) for bi, ti, _ in main_pairs),
        **guard,
        "tiny_discarded_pairs": tiny_guard["discarded_pairs"],
        "model": f"{DEPTH}x Linear({WIDTH}, {WIDTH}), batch {BATCH}, fp32",
        "ema": args.ema,
        "threads": args.threads,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()

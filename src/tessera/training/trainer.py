"""ONE generic trainer for every stage (dVAE, transformer, CLIP, ...).

A stage supplies a model, an ``objective(model, batch, step) -> (loss, metrics)`` and a
resumable batch stream; the trainer never names a model. It owns the optimisation (AdamW
with the paper's parameter groups, pure-function LR schedules, clipping, accumulation), the
precision (bf16 / fp16 autocast, global or per-resblock gradient scaling), the EMA, DDP and
PowerSGD or FSDP2 with distributed checkpoints (``train.parallelism``), atomic checkpoints
with exact resume, non-finite step skipping, signals, and logs.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import resource
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tessera.config.base import Config
from tessera.config.training import TrainConfig
from tessera.errors import (
    CheckpointError,
    CompileError,
    TesseraError,
    TrainingDivergedError,
    TrainingError,
)
from tessera.training import schedules, state
from tessera.training.data import BatchStream
from tessera.training.distributed import (
    DistContext,
    compression_ratio,
    load_powersgd_tensors,
    powersgd_tensors,
    wrap_ddp,
    wrap_fsdp,
)
from tessera.training.ema import EMA
from tessera.training.optim import build_adamw
from tessera.training.precision import NoScaling, autocast, make_grad_scaling

log = logging.getLogger("tessera.training")

# objective(model, batch, step) -> (loss, metrics); ``model`` may be DDP-wrapped, so the
# objective calls ``model(...)`` once and reads everything it needs from the output.
Objective = Callable[[nn.Module, Any, int], tuple[torch.Tensor, dict[str, float]]]
SampleHook = Callable[[nn.Module, int, Path], None]


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate of update ``step`` (0-based): a pure function of the config."""
    if cfg.lr_schedule == "constant":
        return schedules.linear_warmup(step, peak=cfg.lr, warmup=cfg.warmup_steps)
    decay = cfg.lr_decay_steps or cfg.steps
    if cfg.lr_schedule == "cosine":
        return schedules.cosine(step, start=cfg.lr, end=cfg.lr_end, steps=decay)
    if cfg.lr_schedule == "halvings":
        return schedules.halvings(
            step, peak=cfg.lr, warmup=cfg.warmup_steps, milestones=cfg.lr_milestones
        )
    return schedules.warmup_cosine(
        step, peak=cfg.lr, end=cfg.lr_end, warmup=cfg.warmup_steps, steps=decay
    )


@dataclasses.dataclass
class TrainResult:
    """What :meth:`Trainer.fit` did (also written to ``run_dir/summary.json``)."""

    step: int
    steps_run: int
    skipped_steps: int
    interrupted: bool
    seconds: float
    examples_per_s: float
    peak_rss_mb: float
    last_loss: float
    resumed_from: int | None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)


class Trainer:
    """Train ``model`` with ``objective`` on ``batches`` under ``config`` into ``run_dir``.

    resume: "auto" continues from the newest complete checkpoint in ``run_dir`` (falling back
      to an older one if the newest is corrupt), "none" starts over (old checkpoints are
      removed), or a path to one checkpoint directory (errors if it cannot be loaded).
    examples_per_batch: how many examples one micro-batch holds (for throughput); defaults to
      ``config.batch_size``.
    """

    def __init__(
        self,
        *,
        model: nn.Module,
        objective: Objective,
        batches: BatchStream,
        config: TrainConfig,
        run_dir: str | Path,
        ctx: DistContext | None = None,
        model_config: Config | None = None,
        resume: str = "auto",
        sample_hook: SampleHook | None = None,
        progress: bool = True,
    ) -> None:
        self.cfg = config
        self.ctx = ctx or DistContext()
        self.run_dir = Path(run_dir)
        # fsdp: a sharded model runs forward only with every rank, so rank 0 keeps a plain
        # CPU copy that gathered weights are written into for samples and the release export
        self.fsdp = config.parallelism == "fsdp"
        self.sharded = self.fsdp and self.ctx.distributed
        self._replica = copy.deepcopy(model).cpu() if self.sharded and self.ctx.is_main else None
        self.model = model.to(self.ctx.device)
        self.model_config = model_config
        self.objective = objective
        self.batches = batches
        self.resume = resume
        self.sample_hook = sample_hook
        self.progress = progress and self.ctx.is_main
        self._autocast = autocast(self.ctx.device.type, config.precision)  # reusable
        if config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=False)
        if config.activation_checkpointing:
            setter = getattr(model, "set_activation_checkpointing", None)
            if setter is None:
                raise TrainingError(
                    f"{type(model).__name__} does not support activation checkpointing"
                )
            setter(True)
        if config.compile:  # in place: state_dict keys, EMA and checkpoints see the plain model
            self.model.compile(dynamic=False)
        self._compile_checked = not config.compile  # the first step compiles
        if self.fsdp:
            self.module = wrap_fsdp(self.model, self.ctx, precision=config.precision)
            self.powersgd = None
        else:
            self.module, self.powersgd = wrap_ddp(
                self.model,
                self.ctx,
                powersgd_rank=config.powersgd_rank,
                powersgd_start_iter=config.powersgd_start_iter,
            )
        self.optimizer = build_adamw(
            self.model,
            lr=config.lr,
            betas=config.betas,
            eps=config.eps,
            weight_decay=config.weight_decay,
            lr_mult=config.lr_multipliers(),
        )
        self.ema = (
            EMA(
                self.model,
                decay=config.ema_decay,
                every=config.ema_every,
                warmup=config.ema_warmup,
            )
            if (config.ema_decay > 0)
            else None
        )
        self.scaling = make_grad_scaling(
            self.model,
            config.precision,
            self.ctx.device.type,
            per_resblock=config.per_resblock_scaling,
        )
        self.step = 0
        self.skipped = 0
        self.consecutive_skips = 0
        self.resumed_from: int | None = None
        self._stop_signal: int | None = None
        self._stop_agreed = False  # distributed: a stop every rank agreed on (see _stopping)
        self._tb = None

    # -- set-up --------------------------------------------------------------------------------
    def _preflight(self) -> None:
        """Fail before training if the run directory is unwritable or the disk too full."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            probe = self.run_dir / f".write-probe-{self.ctx.rank}"  # ranks share run_dir
            probe.write_bytes(b"0" * 4096)
            probe.unlink()
        except OSError as e:
            raise TrainingError(f"run directory {self.run_dir} is not writable: {e}") from None
        n_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        # model + EMA (fp32) + two Adam moments, twice (the new checkpoint before pruning).
        need = 2 * 4 * n_bytes + (1 << 20)
        free = shutil.disk_usage(self.run_dir).free
        if free < need:
            raise TrainingError(
                f"not enough disk space in {self.run_dir}: checkpoints need ~{need >> 20} MiB, "
                f"{free >> 20} MiB free"
            )

    def _restore(self) -> None:
        if self.resume == "none":
            if self.ctx.is_main:
                shutil.rmtree(state.checkpoint_dir(self.run_dir), ignore_errors=True)
                for f in ("metrics.jsonl", "summary.json"):
                    (self.run_dir / f).unlink(missing_ok=True)
            self.ctx.barrier()
            return
        if self.ctx.is_main:
            n = state.remove_stale(self.run_dir)
            if n:
                log.warning("removed %d incomplete checkpoint(s) left by an interrupted write", n)
        self.ctx.barrier()
        if self.resume == "auto":
            candidates = list(reversed(state.list_complete(self.run_dir)))
            for i, path in enumerate(candidates):
                try:
                    self._load(path)
                    return
                except CheckpointError as e:
                    if i + 1 == len(candidates):
                        raise
                    log.warning("%s; falling back to an older checkpoint", e)
            return
        self._load(Path(self.resume))

    def _load(self, path: Path) -> None:
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        if state.is_dcp(path) != self.fsdp:
            was = "fsdp" if state.is_dcp(path) else "ddp"
            raise CheckpointError(
                f"{path} was written by a train.parallelism={was} run; resume it with {was}"
            )
        if self.fsdp:
            self._load_dcp(path)
            return
        meta, t = state.read_state(path)
        saved_cfg = meta.get("train_config", {})
        if saved_cfg.get("batch_size") not in (None, self.cfg.batch_size):
            log.warning(
                "batch_size changed since the checkpoint (%s -> %s)",
                saved_cfg.get("batch_size"),
                self.cfg.batch_size,
            )
        self._check_model_config(path, meta.get("model_config"))
        if meta.get("world_size", 1) != self.ctx.world_size:
            raise CheckpointError(
                f"{path} was written with world size {meta.get('world_size')}, this run has "
                f"{self.ctx.world_size}; exact resume needs the same world size"
            )
        try:
            load_model(self.model, str(path / "model.safetensors"), device=str(self.ctx.device))
        except (SafetensorError, OSError, RuntimeError) as e:
            first = str(e).splitlines()[0]
            raise CheckpointError(f"cannot load {path / 'model.safetensors'}: {first}") from None
        state.load_optimizer_tensors(self.optimizer, t["optimizer"], meta["optimizer"])
        if self.ema is not None:
            if "ema" not in t:
                raise CheckpointError(f"{path} has no ema.safetensors but EMA is enabled")
            self.ema.load_state_dict(t["ema"])
            self.ema.updates = _ema_updates(meta, self.ema)
        self.scaling.load_state_dict(meta["grad_scaling"])
        self.batches.load_state_dict(meta["data"][self.ctx.rank])
        extra = t["extra"]
        rank_tensors = {
            k.split(".", 2)[2]: v for k, v in extra.items() if k.startswith(f"rng.{self.ctx.rank}.")
        }
        state.restore_rng(meta["rng"][self.ctx.rank], rank_tensors)
        if self.powersgd is not None:
            if "powersgd" in meta:
                # error feedback is per rank: each rank restores its own (P/Q are the same)
                pre = f"powersgd.{self.ctx.rank}."
                ps = {k[len(pre) :]: v for k, v in extra.items() if k.startswith(pre)}
                load_powersgd_tensors(self.powersgd, ps, meta["powersgd"], self.ctx.device)
            else:
                log.warning("checkpoint has no PowerSGD state: compressor state reset")
        self.step = int(meta["step"])
        self.skipped = int(meta["skipped_steps"])
        self.consecutive_skips = int(meta.get("consecutive_skips", 0))
        self.resumed_from = self.step
        if self.ctx.is_main:
            log.info("resumed from %s (step %d)", path, self.step)
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)

    def _check_model_config(self, path: Path, saved: dict[str, Any] | None) -> None:
        """One line naming what differs when the checkpoint's model config is not the run's.
        The saved dict is read through the config class first, so a field added to the
        config since the checkpoint was written counts at its default (a run resumes across
        an upgrade that adds an option with the old behaviour as its default)."""
        if self.model_config is None or saved is None:
            return
        now = self.model_config.to_dict()
        try:
            then = type(self.model_config).from_dict(saved).to_dict()
        except TesseraError:  # a key the config no longer has, or a bad value
            then = saved
        if then != now:
            diff = _dict_diff(then, now)
            raise CheckpointError(f"{path}: model config differs from the checkpoint: {diff}")

    def _dcp_state(self) -> dict[str, Any]:
        """Model, optimizer (by parameter name) and EMA: sharded DTensors under fsdp, plain
        tensors alone; DCP saves either and loads either into the other."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        app: dict[str, Any] = {"model": model_sd, "optimizer": optim_sd}
        if self.ema is not None:
            app["ema"] = self.ema.state_dict()
        return app

    def _load_dcp(self, path: Path) -> None:
        """Resume from a DCP checkpoint written on any number of ranks (reliability T27).

        Weights, AdamW moments and EMA are resharded by DCP. The data position and RNG of
        rank r come from the saved rank r (rank 0's for ranks the saved run did not have):
        exact for the seekable ``shapes`` stream when the global batch (batch_size x world
        size) is unchanged, since its global batch b is the union of the ranks' batches b.
        """
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        meta, extra = state.read_dcp_state(path)
        self._check_model_config(path, meta.get("model_config"))
        saved_world = int(meta.get("world_size", 1))
        saved_global = int(meta.get("train_config", {}).get("batch_size", 0)) * saved_world
        if saved_global != self.cfg.batch_size * self.ctx.world_size:
            log.warning(
                "global batch changed since the checkpoint (%d -> %d): the data position is "
                "carried over as a count of batches",
                saved_global,
                self.cfg.batch_size * self.ctx.world_size,
            )
        if self.ema is not None and not meta.get("has_ema", False):
            raise CheckpointError(f"{path} has no EMA weights but EMA is enabled")
        app = self._dcp_state()
        if self.ema is None:
            app.pop("ema", None)
        try:
            dcp.load(app, checkpoint_id=str(path / state.DCP_DIR), no_dist=not self.ctx.distributed)
        except Exception as e:  # DCP raises CheckpointException / RuntimeError / OSError
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot load {path / state.DCP_DIR}: {first}") from None
        set_state_dict(
            self.model,
            self.optimizer,
            model_state_dict=app["model"],
            optim_state_dict=app["optimizer"],
        )
        if self.ema is not None:
            self.ema.load_state_dict(app["ema"])
            self.ema.updates = _ema_updates(meta, self.ema)
        self.scaling.load_state_dict(meta["grad_scaling"])
        src = self.ctx.rank if self.ctx.rank < saved_world else 0
        self.batches.load_state_dict(meta["data"][src])
        pre = f"rng.{src}."
        rank_tensors = {k[len(pre) :]: v for k, v in extra.items() if k.startswith(pre)}
        state.restore_rng(meta["rng"][src], rank_tensors)
        self.step = int(meta["step"])
        self.skipped = int(meta["skipped_steps"])
        self.consecutive_skips = int(meta.get("consecutive_skips", 0))
        self.resumed_from = self.step
        if self.ctx.is_main:
            log.info(
                "resumed from %s (step %d; saved on %d rank(s), now %d)",
                path,
                self.step,
                saved_world,
                self.ctx.world_size,
            )
            _truncate_metrics(self.run_dir / "metrics.jsonl", self.step)

    def _save(self) -> Path | None:
        if self.fsdp:
            return self._save_dcp()
        js, tensors = state.capture_rng()
        data_state = self.batches.state_dict()
        ps = None if self.powersgd is None else powersgd_tensors(self.powersgd)
        gathered = self.ctx.all_gather_objects((js, tensors, data_state, ps))
        if not self.ctx.is_main:
            return None
        extra: dict[str, torch.Tensor] = {}
        for r, (_, tens, _, _) in enumerate(gathered):
            for k, v in tens.items():
                extra[f"rng.{r}.{k}"] = v
        meta: dict[str, Any] = {
            "rng": [g[0] for g in gathered],
            "data": [g[2] for g in gathered],
            "grad_scaling": self.scaling.state_dict(),
            "skipped_steps": self.skipped,
            "consecutive_skips": self.consecutive_skips,
            "ema_updates": None if self.ema is None else self.ema.updates,
            "world_size": self.ctx.world_size,
            "train_config": self.cfg.to_dict(),
            "model_config": None if self.model_config is None else self.model_config.to_dict(),
            "lr": learning_rate(self.cfg, max(self.step - 1, 0)),
        }
        if ps is not None:
            for r, g in enumerate(gathered):  # every rank's compressor (its own error feedback)
                extra.update({f"powersgd.{r}.{k}": v for k, v in g[3][0].items()})
            meta["powersgd"] = ps[1]  # iteration and Q-init RNG: the same on every rank
        path = state.save_state(
            self.run_dir,
            self.step,
            model=self.model,
            ema=None if self.ema is None else self.ema.state_dict(),
            optimizer=self.optimizer,
            meta=meta,
            extra_tensors=extra,
            keep_last=self.cfg.keep_last,
        )
        log.debug("checkpoint %s", path)
        return path

    def _save_dcp(self) -> Path | None:
        js, tensors = state.capture_rng()
        gathered = self.ctx.all_gather_objects((js, tensors, self.batches.state_dict()))
        extra = {f"rng.{r}.{k}": v for r, g in enumerate(gathered) for k, v in g[1].items()}
        meta: dict[str, Any] = {
            "rng": [g[0] for g in gathered],
            "data": [g[2] for g in gathered],
            "grad_scaling": self.scaling.state_dict(),
            "skipped_steps": self.skipped,
            "consecutive_skips": self.consecutive_skips,
            "ema_updates": None if self.ema is None else self.ema.updates,
            "world_size": self.ctx.world_size,
            "has_ema": self.ema is not None,
            "train_config": self.cfg.to_dict(),
            "model_config": None if self.model_config is None else self.model_config.to_dict(),
            "lr": learning_rate(self.cfg, max(self.step - 1, 0)),
        }
        path = state.save_dcp_state(
            self.run_dir,
            self.step,
            ctx=self.ctx,
            app_state=self._dcp_state(),
            meta=meta,
            extra_tensors=extra,
            keep_last=self.cfg.keep_last,
        )
        log.debug("checkpoint %s", path)
        return path

    @contextlib.contextmanager
    def release_model(self) -> Iterator[nn.Module | None]:
        """The model to sample from or export: its EMA weights when EMA is on, else the live
        ones. Rank 0 gets an ordinary module, every other rank None. Under fsdp every rank
        must enter (the shards are gathered) and rank 0 gets its plain CPU copy."""
        if not self.sharded:
            if not self.ctx.is_main:
                yield None
                return
            ema = self.ema.applied(self.model) if self.ema is not None else None
            with ema or contextlib.nullcontext():
                yield self.model
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
        from torch.distributed.tensor import DTensor

        if self.ema is not None:  # one all-gather per tensor, in the same order on every rank
            full = {
                k: v.full_tensor() if isinstance(v, DTensor) else v
                for k, v in self.ema.state_dict().items()
            }
        else:
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            full = get_model_state_dict(self.model, options=opts)
        if self._replica is None:
            yield None
            return
        with torch.no_grad():
            for k, v in self._replica.state_dict().items():
                v.copy_(full[k].to(device=v.device, dtype=v.dtype))
        yield self._replica

    # -- the loop -----------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        self._preflight()
        self._restore()
        cfg = self.cfg
        start_step = self.step
        metrics_file = (self.run_dir / "metrics.jsonl").open("a") if self.ctx.is_main else None
        self._open_tensorboard()
        examples = 0
        last_loss = float("nan")
        t0 = flushed = time.perf_counter()
        pending: list[dict[str, Any]] = []  # log records, written about once a second

        def write_log() -> None:
            if metrics_file is not None and pending:
                metrics_file.write("".join(json.dumps(r, allow_nan=True) + "\n" for r in pending))
                metrics_file.flush()
            pending.clear()

        def save() -> None:
            write_log()  # the log is complete up to every checkpoint
            self._save()

        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=cfg.steps, initial=self.step, desc="train", unit="step")
        try:
            with self._signals():
                while self.step < cfg.steps and not self._stopping():
                    t_step = time.perf_counter()
                    loss, metrics, n_ex = self._train_step()
                    if self.sharded:  # the logged loss is the global batch's (mean of ranks)
                        loss = self.ctx.mean(loss)
                    dt = time.perf_counter() - t_step
                    examples += n_ex
                    last_loss = loss
                    self.step += 1
                    record = {"step": self.step, "loss": loss, **metrics}
                    record["examples_per_s"] = n_ex / dt if dt > 0 else float("nan")
                    if "tokens" in metrics:
                        record["tokens_per_s"] = metrics["tokens"] * self.ctx.world_size / dt
                    if metrics_file is not None and (
                        self.step % cfg.log_every == 0 or self.step == cfg.steps
                    ):
                        pending.append(record)
                        if t_step + dt - flushed > 1.0:  # live, but not a write per step
                            write_log()
                            flushed = t_step + dt
                        self._tensorboard(record)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.4f}", ex_s=f"{record['examples_per_s']:.1f}")
                        bar.update(1)
                    if cfg.sample_every and self.step % cfg.sample_every == 0:
                        self._sample()
                    if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                        save()
                if self._stopping() and self.step % cfg.checkpoint_every:
                    log.warning("signal %s: checkpointing at step %d", self._stop_signal, self.step)
                    save()
        finally:
            if bar is not None:
                bar.close()
            if metrics_file is not None:
                write_log()
                metrics_file.close()
            if self._tb is not None:
                self._tb.close()
        seconds = time.perf_counter() - t0
        result = TrainResult(
            step=self.step,
            steps_run=self.step - start_step,
            skipped_steps=self.skipped,
            interrupted=self._stopping(),
            seconds=seconds,
            examples_per_s=examples / seconds if seconds > 0 else 0.0,
            peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            last_loss=last_loss,
            resumed_from=self.resumed_from,
        )
        if self.powersgd is not None:
            result.extra["powersgd_compression_ratio"] = compression_ratio(
                self.model, self.cfg.powersgd_rank
            )
        if self.ctx.is_main:
            (self.run_dir / "summary.json").write_text(
                json.dumps(dataclasses.asdict(result), indent=2) + "\n"
            )
        return result

    def _train_step(self) -> tuple[float, dict[str, float], int]:
        cfg = self.cfg
        lr = learning_rate(cfg, self.step)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_mult", 1.0)
        total = 0.0
        metrics: dict[str, float] = {}
        n_examples = 0
        finite_loss = True
        for micro in range(cfg.grad_accum):
            batch = next(self.batches)
            n_examples += _batch_len(batch, cfg.batch_size) * self.ctx.world_size
            sync = micro == cfg.grad_accum - 1 or not self.ctx.distributed
            if self.sharded:  # FSDP2: reduce-scatter only after the last micro-batch
                self.module.set_requires_gradient_sync(sync)
            with self._compiling():
                with (
                    contextlib.nullcontext() if sync or self.sharded else self.module.no_sync(),
                    self._autocast,
                ):
                    loss, m = self.objective(self.module, batch, self.step)
                value = float(loss.detach())  # one host sync per micro-batch
                finite_loss &= math.isfinite(value)
                self.scaling.scale_loss(
                    loss / cfg.grad_accum if cfg.grad_accum > 1 else loss
                ).backward()
            total += value / cfg.grad_accum
            for k, v in m.items():
                metrics[k] = metrics.get(k, 0.0) + float(v) / cfg.grad_accum
        if isinstance(self.scaling, NoScaling):  # nothing to unscale; the norm below is
            finite = finite_loss  # the finiteness check (NaN / inf if any gradient is)
        else:
            finite = self.scaling.unscale_(self.optimizer) and finite_loss
        norm = float("nan")
        if finite:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            if cfg.grad_clip > 0:
                norm = _scalar(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
            else:
                grads = [p.grad for p in params if p.grad is not None]
                norm = _scalar(torch.nn.utils.get_total_norm(grads))
            finite = math.isfinite(norm)
        # Every rank skips together, and stops together (a signal may reach one rank only, or
        # the ranks at different steps): one all-reduce for both, nobody hangs.
        finite, running = self.ctx.all_true_each(finite, self._stop_signal is None)
        self._stop_agreed = not running
        if finite:
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update(self.model, self.step)
            self.consecutive_skips = 0
        else:
            self.skipped += 1
            self.consecutive_skips += 1
            if self.powersgd is not None:  # its memories saw the non-finite gradients
                self.powersgd.reset()
            log.warning(
                "step %d: non-finite loss or gradients, update skipped (%d in a row, %d total)",
                self.step + 1,
                self.consecutive_skips,
                self.skipped,
            )
        self.scaling.update(finite)
        self.optimizer.zero_grad(set_to_none=True)
        if self.consecutive_skips >= cfg.max_consecutive_skips:
            last = state.list_complete(self.run_dir)
            raise TrainingDivergedError(
                f"{self.consecutive_skips} consecutive steps had non-finite loss or gradients "
                f"(at step {self.step + 1}); stopped. Last good checkpoint: "
                f"{last[-1] if last else 'none'}. Try a lower lr, bf16/fp32, or gradient clipping"
            )
        metrics.update({"lr": lr, "grad_norm": norm, "skipped": float(not finite)})
        for i, s in enumerate(self.scaling.scales()):
            if i < 8:  # a few scales for the log; all of them are in the checkpoint
                metrics[f"grad_scale.{i}"] = s
        return (total if finite_loss else float("nan")), metrics, n_examples

    @contextlib.contextmanager
    def _compiling(self) -> Iterator[None]:
        """With ``train.compile``: the first forward + backward compiles; a compiler failure
        there is one line saying how to go on without it."""
        if self._compile_checked:
            yield
            return
        try:
            yield
        except TesseraError:
            raise
        except Exception as e:  # inductor / dynamo raise many kinds
            raise CompileError.failed(
                "train.compile: compiling the model", e, "train without it (train.compile=false)"
            ) from e
        self._compile_checked = True

    def _sample(self) -> None:
        if self.sample_hook is None:
            return
        if self.sharded:  # every rank gathers; rank 0 samples from its plain copy
            with self.release_model() as plain:
                if plain is not None:
                    out = self.run_dir / "samples"
                    out.mkdir(exist_ok=True)
                    plain.eval()
                    with torch.no_grad():
                        self.sample_hook(plain, self.step, out)
            return
        if not self.ctx.is_main:
            return
        out = self.run_dir / "samples"
        out.mkdir(exist_ok=True)
        ctx = self.ema.applied(self.model) if self.ema is not None else contextlib.nullcontext()
        was_training = self.model.training
        self.model.eval()
        try:
            with ctx, torch.no_grad():
                self.sample_hook(self.model, self.step, out)
        finally:
            self.model.train(was_training)

    # -- signals and logs ---------------------------------------------------------------------
    def _stopping(self) -> bool:
        """Whether to stop after this step: alone, on a signal; distributed, only when the
        ranks agreed on it in the last step's all-reduce (else the others would hang)."""
        return self._stop_agreed if self.ctx.distributed else self._stop_signal is not None

    @contextlib.contextmanager
    def _signals(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self._stop_signal = signum

        previous = {}
        try:
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: no handlers
            pass
        try:
            yield
        finally:
            for sig, h in previous.items():
                signal.signal(sig, h)

    def _open_tensorboard(self) -> None:
        if not self.ctx.is_main:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            return
        self._tb = SummaryWriter(log_dir=str(self.run_dir / "tensorboard"))

    def _tensorboard(self, record: dict[str, float]) -> None:
        if self._tb is None:
            return
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float) and math.isfinite(v):
                self._tb.add_scalar(k, v, record["step"])


def _scalar(t: torch.Tensor) -> float:
    """A norm as a float; under FSDP it is a replicated DTensor (already reduced)."""
    return float(t.full_tensor() if hasattr(t, "full_tensor") else t)


def _batch_len(batch: Any, default: int) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    if isinstance(batch, dict):
        batch = next(iter(batch.values()), None)
    if isinstance(batch, list | tuple) and batch:
        first = batch[0]
        return first.shape[0] if isinstance(first, torch.Tensor) else len(batch)
    return default


def _ema_updates(meta: dict[str, Any], ema: EMA) -> int:
    """The EMA's update count at a checkpoint (older checkpoints: one per ``every`` steps)."""
    n = meta.get("ema_updates")
    return int(n) if n is not None else int(meta["step"]) // ema.every


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines of steps after ``step`` (they are about to be replayed)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                kept.append(line)
        except ValueError:
            continue  # a torn last line from a kill
    path.write_text("".join(k + "\n" for k in kept))


def _dict_diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    keys = sorted(set(a) | set(b))
    parts = [
        f"{k}: checkpoint {a.get(k)!r} vs now {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)
    ]
    return "; ".join(parts[:5]) + (f" (+{len(parts) - 5} more)" if len(parts) > 5 else "")

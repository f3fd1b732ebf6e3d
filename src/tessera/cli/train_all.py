"""``tessera train --preset shapes``: the whole pipeline in one command, stage after stage.

BPE tokenizer -> dVAE -> transformer -> CLIP, each in its own folder under ``--run-dir``
(``tokenizer/``, ``vae/``, ``dalle/``, ``clip/``). Each stage is resumable: a finished stage
(its ``final/`` checkpoint exists) is skipped, an interrupted one resumes from its newest
checkpoint when the command is run again. ``summary.json`` records each stage's wall time and
figures; ``--install DIR`` copies the release checkpoints where ``tessera generate`` looks for
the default model (the package's ``assets/shapes``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

from tessera.errors import ConfigError, TrainingError

STAGE_ORDER = ("tokenizer", "vae", "dalle", "clip")
PRESETS = {"shapes", "tiny"}


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the whole pipeline (tokenizer, dVAE, transformer, CLIP) in one command",
        description=(
            "Run every stage on the built-in data, in order: BPE tokenizer -> dVAE -> "
            "transformer -> CLIP. Re-running resumes: finished stages are skipped and an "
            "interrupted one continues from its last checkpoint. Writes RUN_DIR/summary.json "
            "(wall time and figures per stage)."
        ),
    )
    p.add_argument("--preset", default="shapes", help="shapes (default) or tiny (a smoke run)")
    p.add_argument("--run-dir", default="runs/shapes", help="output folder (default runs/shapes)")
    p.add_argument(
        "--stages", default=",".join(STAGE_ORDER), help="comma-separated subset, in order"
    )
    p.add_argument("--install", help="copy the release checkpoints to this folder afterwards")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def _stage_argv(stage: str, preset: str, run: Path, no_progress: bool) -> list[str]:
    if stage == "tokenizer":
        tok_preset = "shapes" if preset == "shapes" else "tiny"
        return [
            "tokenizer",
            "train",
            "shapes",
            "--out",
            str(run / "tokenizer"),
            "--preset",
            tok_preset,
        ]
    argv = [stage, "train", "--preset", preset, "--run-dir", str(run / stage)]
    if stage in ("dalle", "clip"):
        argv += ["--tokenizer", str(run / "tokenizer")]
    if stage == "dalle":
        argv += ["--vae", str(run / "vae" / "final")]
    return argv + (["--no-progress"] if no_progress else [])


def _done(stage: str, run: Path) -> bool:
    if stage == "tokenizer":
        return (run / "tokenizer" / "tokenizer.json").is_file()
    return (run / stage / "final" / "config.json").is_file()


def _figures(stage: str, run: Path) -> dict[str, Any]:
    """The stage's own summary.json and last eval record, when it wrote them."""
    out: dict[str, Any] = {}
    summary = run / stage / "summary.json"
    if summary.is_file():
        out["summary"] = json.loads(summary.read_text(encoding="utf-8"))
    evals = run / stage / "eval.jsonl"
    if evals.is_file():
        lines = [ln for ln in evals.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if lines:
            out["last_eval"] = json.loads(lines[-1])
    return out


def run(args: argparse.Namespace) -> int:
    from tessera.cli.main import main

    if args.preset not in PRESETS:
        raise ConfigError(f"unknown pipeline preset {args.preset!r}; choose from shapes, tiny")
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown or not stages:
        raise ConfigError(f"--stages takes a subset of {','.join(STAGE_ORDER)}, got {args.stages}")
    stages = [s for s in STAGE_ORDER if s in stages]
    run_dir = Path(args.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    summary_path = run_dir / "summary.json"
    summary: dict[str, Any] = (
        json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    )
    summary.update({"preset": args.preset, "stages": summary.get("stages", {})})
    for i, stage in enumerate(stages, 1):
        header = f"[{i}/{len(stages)}] {stage}"
        if _done(stage, run_dir):
            print(f"{header}: done already ({run_dir / stage}), skipped", flush=True)
            continue
        print(f"{header}: training ...", flush=True)
        t0 = time.perf_counter()
        code = main(_stage_argv(stage, args.preset, run_dir, args.no_progress))
        seconds = time.perf_counter() - t0
        record = summary["stages"].setdefault(stage, {"wall_s": 0.0})
        record["wall_s"] = round(record["wall_s"] + seconds, 1)
        record.update(_figures(stage, run_dir))
        summary["total_wall_s"] = round(sum(r["wall_s"] for r in summary["stages"].values()), 1)
        summary_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        if code != 0:
            raise TrainingError(
                f"stage {stage} stopped (exit {code}); run the same command again to resume"
            )
        print(f"{header}: finished in {seconds / 60:.1f} min", flush=True)
    print(f"pipeline: {summary.get('total_wall_s', 0) / 60:.1f} min in all; {summary_path}")
    if args.install:
        install(run_dir, Path(args.install))
    return 0


def install(run_dir: Path, dest: Path) -> None:
    """Copy the release checkpoints (pipeline = transformer + tokenizer + dVAE, and CLIP),
    with their weights stored in float16, and the run's summary.json."""
    missing = [s for s in ("dalle", "clip") if not _done(s, run_dir)]
    if missing:
        raise TrainingError(f"cannot install: stage(s) {', '.join(missing)} not finished")
    pairs = (("pipeline", run_dir / "dalle" / "final"), ("clip", run_dir / "clip" / "final"))
    for name, src in pairs:
        target = dest / name
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(src, target)
        for weights in target.rglob("model.safetensors"):
            to_half(weights)
    summary = run_dir / "summary.json"
    if summary.is_file():
        shutil.copy2(summary, dest / "summary.json")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"installed the pipeline and CLIP into {dest} ({size / 2**20:.1f} MiB)")


def to_half(path: Path) -> None:
    """Store a weights file's float32 tensors as float16 (halves what ships; loading casts
    back to the model's dtype). Values beyond float16's range are refused, not clipped."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    for k, t in tensors.items():
        if t.dtype == torch.float32:
            if t.numel() and t.abs().max() > torch.finfo(torch.float16).max:
                raise TrainingError(f"{path}: {k} does not fit in float16")
            tensors[k] = t.half()
    metadata["stored_dtype"] = "float16"
    save_file(tensors, str(path), metadata=metadata)

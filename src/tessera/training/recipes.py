"""Multi-stage runs: ``tessera train --preset shapes`` trains the whole pipeline, stage after stage.

BPE tokenizer -> dVAE -> transformer -> CLIP, each in its own folder under the run directory
(``tokenizer/``, ``vae/``, ``dalle/``, ``clip/``). Each stage is resumable: a finished stage
(its ``final/`` checkpoint exists) is skipped, an interrupted one resumes from its newest
checkpoint when the recipe is run again. ``summary.json`` records each stage's wall time and
figures; :func:`install` copies the release checkpoints into a pipeline folder
(``model_index.json``) where ``tessera generate`` looks for the default model.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tessera.errors import ConfigError, TrainingError

STAGE_ORDER = ("tokenizer", "vae", "dalle", "clip")
RECIPES = ("shapes", "tiny")

# Sampling defaults written into the installed pipeline's model_index.json, so that
# ``tessera generate`` uses them without flags (tessera.sampling.sample.SamplingConfig fields).
# shapes: chosen with benchmarks/tune_sampling.py on tuning prompts (another data seed than
# the evaluation's), see the README's table.
SAMPLING_DEFAULTS: dict[str, dict[str, float | int]] = {
    # temperature 0.8, top-k 64, guidance 1.5: the best sum of unranked and CLIP-reranked
    # (8 -> 1) strict fidelity over 8 settings on 96 tuning prompts (0.376 + 0.479; t 1 and
    # no guidance: 0.284 + 0.417).
    "shapes": {"temperature": 0.8, "top_k": 64, "top_p": 1.0, "guidance": 1.5},
    "tiny": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "guidance": 1.0},
}


def _train_tokenizer(preset: str, run: Path) -> int:
    from tessera.config import preset as config_preset
    from tessera.data.sources import iter_captions
    from tessera.text import TextTokenizer

    captions = list(iter_captions("shapes"))
    tok = TextTokenizer.train(captions, config_preset("tokenizer", preset))
    tok.save(run / "tokenizer")
    print(f"tokenizer: trained on {len(captions)} captions, {tok.vocab_size} ids")
    return 0


def _stage_runner(stage: str, preset: str, run: Path, progress: bool) -> Callable[[], int]:
    from tessera.training.stages.runner import train_stage

    if stage == "tokenizer":
        return lambda: _train_tokenizer("shapes" if preset == "shapes" else "tiny", run)
    kwargs: dict[str, Any] = {"preset": preset, "run_dir": run / stage, "progress": progress}
    if stage in ("dalle", "clip"):
        kwargs["tokenizer"] = run / "tokenizer"
    if stage == "dalle":
        kwargs["vae"] = run / "vae" / "final"
    return lambda: train_stage(stage, **kwargs)


def stage_done(stage: str, run: Path) -> bool:
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


def run_recipe(
    preset: str,
    run_dir: str | Path,
    *,
    stages: list[str] | tuple[str, ...] = STAGE_ORDER,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the recipe's stages in order; returns the run's summary."""
    from tessera.io import atomic_write_json

    if preset not in RECIPES:
        raise ConfigError(f"unknown pipeline preset {preset!r}; choose from {', '.join(RECIPES)}")
    unknown = [s for s in stages if s not in STAGE_ORDER]
    if unknown or not stages:
        raise ConfigError(f"--stages takes a subset of {','.join(STAGE_ORDER)}, got {stages}")
    stages = [s for s in STAGE_ORDER if s in stages]
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    summary_path = run / "summary.json"
    summary: dict[str, Any] = (
        json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    )
    summary.update({"preset": preset, "stages": summary.get("stages", {})})
    for i, stage in enumerate(stages, 1):
        header = f"[{i}/{len(stages)}] {stage}"
        if stage_done(stage, run):
            print(f"{header}: done already ({run / stage}), skipped", flush=True)
            continue
        print(f"{header}: training ...", flush=True)
        t0 = time.perf_counter()
        code = _stage_runner(stage, preset, run, progress)()
        seconds = time.perf_counter() - t0
        record = summary["stages"].setdefault(stage, {"wall_s": 0.0})
        record["wall_s"] = round(record["wall_s"] + seconds, 1)
        record.update(_figures(stage, run))
        summary["total_wall_s"] = round(sum(r["wall_s"] for r in summary["stages"].values()), 1)
        atomic_write_json(summary_path, summary)
        if code != 0:
            raise TrainingError(
                f"stage {stage} stopped (exit {code}); run the same command again to resume"
            )
        print(f"{header}: finished in {seconds / 60:.1f} min", flush=True)
    print(f"pipeline: {summary.get('total_wall_s', 0) / 60:.1f} min in all; {summary_path}")
    return summary


def install(run_dir: str | Path, dest: str | Path, *, defaults: dict | None = None) -> Path:
    """Write the run's release checkpoints as a pipeline folder ``dest/pipeline`` (transformer,
    dVAE, tokenizer and CLIP, weights stored in float16) with the run's ``summary.json``.
    defaults: the sampling defaults to store (default: the run's recipe's
    :data:`SAMPLING_DEFAULTS`)."""
    from tessera.checkpoint import load, load_checkpoint
    from tessera.pipelines.dalle import save_pipeline

    run, dest = Path(run_dir), Path(dest)
    missing = [s for s in ("dalle", "clip") if not stage_done(s, run)]
    if missing:
        raise TrainingError(f"cannot install: stage(s) {', '.join(missing)} not finished")
    final = run / "dalle" / "final"
    if defaults is None:
        summary_file = run / "summary.json"
        recipe = (
            json.loads(summary_file.read_text(encoding="utf-8")).get("preset", "shapes")
            if summary_file.is_file()
            else "shapes"
        )
        defaults = SAMPLING_DEFAULTS.get(recipe, {})
    clip = load_checkpoint(run / "clip" / "final", kind="clip")
    out = save_pipeline(
        dest / "pipeline",
        model=load(final, kind="dalle"),
        vae=load(final / "vae", kind="vae"),
        tokenizer=load(run / "tokenizer", kind="tokenizer"),
        clip=clip.obj,
        clip_tokenizer=clip.tokenizer,
        defaults=dict(defaults),
        dtype="float16",
    )
    legacy_clip = dest / "clip"  # the layout before pipeline folders: CLIP beside the pipeline
    if legacy_clip.exists():
        shutil.rmtree(legacy_clip)
    summary = run / "summary.json"
    if summary.is_file():
        shutil.copy2(summary, dest / "summary.json")
    size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
    print(f"installed the pipeline (with its CLIP) into {out} ({size / 2**20:.1f} MiB)")
    return out

"""Multi-stage runs: ``tessera train --preset shapes`` trains the whole pipeline, stage after stage.

DALL·E (``shapes``, ``tiny``): BPE tokenizer -> dVAE -> transformer -> CLIP, each in its own
folder under the run directory (``tokenizer/``, ``vae/``, ``dalle/``, ``clip/``).
DALL·E 2 / unCLIP (``shapes-unclip``, ``tiny-unclip``): tokenizer and CLIP (``shapes-unclip``
reuses the shipped DALL·E pipeline's; ``tiny-unclip`` trains tiny ones) -> diffusion prior ->
AR prior -> decoder -> upsamplers (``prior/``, ``ar_prior/``, ``decoder/``, ``upsampler_1/``,
``upsampler_2/``). Each stage is resumable: a finished stage
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
UNCLIP_STAGE_ORDER = (
    "tokenizer",
    "clip",
    "prior",
    "ar_prior",
    "decoder",
    "upsampler_1",
    "upsampler_2",
)
RECIPES = ("shapes", "tiny", "shapes-unclip", "tiny-unclip")
# unCLIP recipe -> stage -> the stage's preset (a missing stage is not part of the recipe)
UNCLIP_PRESETS: dict[str, dict[str, str]] = {
    "shapes-unclip": {
        "prior": "shapes",
        "ar_prior": "shapes",
        "decoder": "shapes",
        "upsampler_1": "shapes-64",
        "upsampler_2": "shapes-128",
    },
    "tiny-unclip": {
        "tokenizer": "tiny",
        "clip": "tiny",
        "prior": "tiny",
        "ar_prior": "tiny",
        "decoder": "tiny",
        "upsampler_1": "tiny-64",
    },
}

# Sampling defaults written into the installed pipeline's model_index.json, so that
# ``tessera generate`` uses them without flags (tessera.sampling.sample.DalleSampling fields).
# shapes: chosen with benchmarks/tune_sampling.py on tuning prompts (another data seed than
# the evaluation's), see docs/results.md "Sampling defaults".
SAMPLING_DEFAULTS: dict[str, dict[str, float | int]] = {
    # temperature 0.6, top-k 64, guidance 1.5 (factorised release, issue 27): the best sum of
    # every-candidate and CLIP-reranked (8 -> 1) strict fidelity over 12 settings (t 0.6 / 0.8 /
    # 1 x guidance 1 / 1.25 / 1.5 / 2) on 96 tuning prompts (0.852 + 0.938), confirmed against
    # the previous t 0.8 on 288 (0.815 + 0.868 vs 0.802 + 0.847);
    # benchmarks/results/tune_sampling-shapes-factorised.jsonl.
    "shapes": {"temperature": 0.6, "top_k": 64, "top_p": 1.0, "guidance": 1.5},
    "tiny": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "guidance": 1.0},
}
# unCLIP sampling defaults (tessera.pipelines.unclip.UnclipSampling fields)
UNCLIP_DEFAULTS: dict[str, dict[str, float | int | str]] = {
    "shapes-unclip": {"decoder_guidance": 3.0, "prior_guidance": 1.0, "prior_candidates": 2},
    "tiny-unclip": {"decoder_steps": 4, "prior_steps": 4, "upsampler_steps": 2},
}


def stage_order(preset: str) -> tuple[str, ...]:
    """The recipe's stages, in order."""
    if preset in UNCLIP_PRESETS:
        table = UNCLIP_PRESETS[preset]
        fixed = ("tokenizer", "clip")
        return tuple(s for s in UNCLIP_STAGE_ORDER if s in fixed or s in table)
    return STAGE_ORDER


def _reuse_shipped(stage: str, run: Path) -> int:
    """``shapes-unclip`` reuses the shipped DALL·E pipeline's tokenizer and CLIP (the decoder
    and priors learn in that CLIP's embedding space)."""
    from tessera.checkpoint import shipped_dir

    src = shipped_dir("pipeline", stage)
    if not src.is_dir():
        raise TrainingError(f"cannot reuse the shipped {stage}: {src} is missing")
    dest = run / "tokenizer" if stage == "tokenizer" else run / "clip" / "final"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(src, dest)
    print(f"{stage}: reused the shipped DALL·E pipeline's ({src})")
    return 0


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

    if preset in UNCLIP_PRESETS:
        return _unclip_stage_runner(stage, preset, run, progress)
    if stage == "tokenizer":
        return lambda: _train_tokenizer("shapes" if preset == "shapes" else "tiny", run)
    kwargs: dict[str, Any] = {"preset": preset, "run_dir": run / stage, "progress": progress}
    if stage in ("dalle", "clip"):
        kwargs["tokenizer"] = run / "tokenizer"
    if stage == "dalle":
        kwargs["vae"] = run / "vae" / "final"
    return lambda: train_stage(stage, **kwargs)


def _unclip_stage_runner(stage: str, recipe: str, run: Path, progress: bool) -> Callable[[], int]:
    from tessera.training.stages.runner import train_stage

    table = UNCLIP_PRESETS[recipe]
    if stage in ("tokenizer", "clip") and stage not in table:
        return lambda: _reuse_shipped(stage, run)
    if stage == "tokenizer":
        return lambda: _train_tokenizer(table["tokenizer"], run)
    kwargs: dict[str, Any] = {
        "preset": table[stage],
        "run_dir": run / stage,
        "progress": progress,
        "tokenizer": run / "tokenizer",
    }
    if stage in ("prior", "ar_prior", "decoder"):
        kwargs["clip"] = run / "clip" / "final"
    name = "upsampler" if stage.startswith("upsampler_") else stage
    return lambda: train_stage(name, **kwargs)


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
    stages: list[str] | tuple[str, ...] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) the recipe's stages in order; returns the run's summary."""
    from tessera.io import atomic_write_json

    if preset not in RECIPES:
        raise ConfigError(f"unknown pipeline preset {preset!r}; choose from {', '.join(RECIPES)}")
    order = stage_order(preset)
    if stages is None:
        stages = order
    unknown = [s for s in stages if s not in order]
    if unknown or not stages:
        raise ConfigError(f"--stages takes a subset of {','.join(order)}, got {list(stages)}")
    stages = [s for s in order if s in stages]
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


def install_unclip(run_dir: str | Path, dest: str | Path, *, defaults: dict | None = None) -> Path:
    """Write an unCLIP run's release checkpoints as the pipeline folder ``dest/unclip``
    (weights in float16) with the run's ``summary.json`` as ``dest/unclip_summary.json``."""
    from tessera.checkpoint import load, load_checkpoint
    from tessera.pipelines.unclip import save_unclip_pipeline

    run, dest = Path(run_dir), Path(dest)
    recipe = _recipe_of(run, "shapes-unclip")
    order = stage_order(recipe)
    missing = [s for s in order if not stage_done(s, run)]
    if missing:
        raise TrainingError(f"cannot install: stage(s) {', '.join(missing)} not finished")
    clip = load_checkpoint(run / "clip" / "final", kind="clip")
    priors = {}
    if "prior" in order:
        priors["diffusion"] = load(run / "prior" / "final", kind="prior")
    if "ar_prior" in order:
        priors["ar"] = load(run / "ar_prior" / "final", kind="ar_prior")
    ups = [s for s in order if s.startswith("upsampler_")]
    out = save_unclip_pipeline(
        dest / "unclip",
        tokenizer=load(run / "tokenizer", kind="tokenizer"),
        clip=clip.obj,
        clip_tokenizer=clip.tokenizer,
        priors=priors,
        decoder=load(run / "decoder" / "final", kind="decoder"),
        upsamplers=[load(run / s / "final", kind="upsampler") for s in ups],
        defaults=dict(UNCLIP_DEFAULTS.get(recipe, {}) if defaults is None else defaults),
        dtype="float16",
    )
    if (run / "summary.json").is_file():
        shutil.copy2(run / "summary.json", dest / "unclip_summary.json")
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"installed the unCLIP pipeline into {out} ({size / 2**20:.1f} MiB)")
    return out


def _recipe_of(run: Path, default: str) -> str:
    summary_file = run / "summary.json"
    if summary_file.is_file():
        return str(json.loads(summary_file.read_text(encoding="utf-8")).get("preset", default))
    return default


def install(run_dir: str | Path, dest: str | Path, *, defaults: dict | None = None) -> Path:
    """Write the run's release checkpoints as a pipeline folder ``dest/pipeline`` (transformer,
    dVAE, tokenizer and CLIP, weights stored in float16) with the run's ``summary.json``.
    defaults: the sampling defaults to store (default: the run's recipe's
    :data:`SAMPLING_DEFAULTS`)."""
    from tessera.checkpoint import load, load_checkpoint
    from tessera.pipelines.dalle import save_pipeline

    run, dest = Path(run_dir), Path(dest)
    if _recipe_of(run, "shapes") in UNCLIP_PRESETS:
        return install_unclip(run, dest, defaults=defaults)
    missing = [s for s in ("dalle", "clip") if not stage_done(s, run)]
    if missing:
        raise TrainingError(f"cannot install: stage(s) {', '.join(missing)} not finished")
    final = run / "dalle" / "final"
    if defaults is None:
        defaults = SAMPLING_DEFAULTS.get(_recipe_of(run, "shapes"), {})
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

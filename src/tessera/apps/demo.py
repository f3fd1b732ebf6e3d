"""The first-minute demo: text -> images with the shipped ``shapes`` models, CLIP-reranked.

A handful of prompts covering what the model was and was not shown in training (seen and
held-out colour-shape pairs, one and two objects, sizes, positions, relations) are sampled
``candidates`` times each; the shipped CLIP keeps the best ``keep``; every kept image is judged
by the shapes checker. An image-prompt example keeps the top half of real eval images and lets
the model complete the rest from the caption (the paper's image-to-image translation).
Writes ``grid.png`` (a row per prompt), ``image_prompt.png``, ``index.html`` (self-contained)
and ``manifest.jsonl`` + PNGs, so ``tessera eval fidelity`` can re-score them.

When the shipped DALL·E 2 (unCLIP) pipeline is installed too, the same prompts go through it
(``unclip/``: its samples and manifest) and ``side_by_side.png`` shows both generators' kept
samples per prompt (DALL·E's 32 px images enlarged to unCLIP's 128 px).

``model`` is a shipped name or a pipeline folder, resolved by
:func:`tessera.pipelines.load_pipeline` as everywhere: ``"unclip"`` (or an unCLIP folder) runs
the demo on DALL·E 2 alone (no image prompts: unCLIP does not complete images).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from tessera.errors import CheckpointError

__all__ = [
    "DEMO_PROMPTS",
    "default_model_dir",
    "default_pipeline_dir",
    "default_unclip_dir",
    "run_generation_demo",
]

# (prompt, what it exercises); held-out pairs: green triangle, blue circle, purple square.
DEMO_PROMPTS: tuple[tuple[str, str], ...] = (
    ("a red circle", "seen pair"),
    ("a large yellow square in the top left corner", "seen pair, size, position"),
    ("a small orange triangle at the bottom", "seen pair, size, position"),
    ("a blue square to the left of a red triangle", "seen pairs, relation"),
    ("a green triangle", "held-out pair"),
    ("a blue circle in the center", "held-out pair, position"),
    ("a small purple square on the right", "held-out pair, size, position"),
    ("a purple square above a yellow circle", "held-out pair, relation"),
)


def default_model_dir() -> Path:
    """Where the shipped shapes models live (``tessera/assets/shapes``)."""
    from tessera.checkpoint import shipped_dir

    return shipped_dir()


def default_pipeline_dir() -> Path:
    """The shipped DALL·E pipeline folder (transformer, dVAE, tokenizer and its CLIP)."""
    return default_model_dir() / "pipeline"


def default_unclip_dir() -> Path:
    """The shipped DALL·E 2 (unCLIP) pipeline folder."""
    return default_model_dir() / "unclip"


def _require(path: Path, what: str) -> Path:
    if not ((path / "config.json").is_file() or (path / "model_index.json").is_file()):
        raise CheckpointError(
            f"no {what} at {path}; train one with `tessera train --preset shapes "
            f"--install {path.parent}` or pass --model/--clip"
        )
    return path


def run_generation_demo(
    out_dir: str | Path,
    *,
    model: str | Path | None = None,
    clip: str | Path | None = None,
    candidates: int = 8,
    keep: int = 4,
    seed: int = 0,
    guidance: float | None = None,
    unclip: str | Path | None = None,
) -> dict[str, Any]:
    """Run the demo; returns (and writes to ``summary.json``) its figures. model: a shipped
    name or pipeline folder (default: ``"dalle"``). unclip: an unCLIP pipeline (name or folder)
    to compare a DALL·E model with (default: the shipped one, when installed; "" = none)."""
    import torch

    from tessera.config.shapes import ShapesConfig
    from tessera.data.images import grid_png, to_uint8
    from tessera.data.shapes import ShapesSource, check_image
    from tessera.pipelines import load_pipeline, resolve_pipeline, write_samples
    from tessera.reporting.html import Image, Table, Text, write_report

    t0 = time.perf_counter()
    path = _require(resolve_pipeline("dalle" if model is None else model), "pipeline")
    options = {} if clip is None else {"clip": _require(Path(clip), "CLIP model")}
    pipe = load_pipeline(path, **options)
    if "rerank" not in pipe.capabilities:
        raise CheckpointError(f"{path} has no CLIP to rerank with; pass --clip DIR")
    settings = pipe.settings
    if guidance is not None:  # the generic knob: DALL·E's guidance, unCLIP's decoder's
        target = getattr(pipe.settings, "aliases", {}).get("guidance", "guidance")
        settings = dataclasses.replace(settings, **{target: guidance})
    prompts = [p for p, _ in DEMO_PROMPTS]
    samples = pipe.generate(prompts, n=candidates, keep=keep, settings=settings, seed=seed)
    out = write_samples(
        out_dir, samples, seed=seed, settings=settings, extra={"candidates": candidates}
    )
    pixels = to_uint8(samples.images)
    verdicts = [bool(check_image(img, p).passed) for img, p in zip(pixels, samples.prompts)]

    # Image prompts: the top half of real eval images, completed from their own captions.
    captions: list[str] = []
    if "image_prompt" in pipe.capabilities:
        size = pipe.image_size
        src = ShapesSource(ShapesConfig(size=size), split="eval", n=4)
        real = np.stack([src.image(i) for i in range(4)])
        captions = [src.prompt(i) for i in range(4)]
        rows = pipe.model.config.grid_size // 2
        x = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 255
        completed = pipe.generate(
            captions, n=1, image_prompt=x, keep_rows=rows, settings=settings, seed=seed
        )
        done = to_uint8(completed.images)
        shown = real.copy()
        cut = rows * size // pipe.model.config.grid_size
        shown[:, cut:] = 255  # what the model was given: the top rows only
        tiles = [t for i in range(4) for t in (real[i], shown[i], done[i])]
        (out / "image_prompt.png").write_bytes(grid_png(tiles, ncol=3))

    compare = None
    if pipe.kind != "unclip":  # DALL·E's samples beside DALL·E 2's, when it is installed
        unclip_dir = (
            default_unclip_dir()
            if unclip is None
            else (resolve_pipeline(unclip) if unclip else None)
        )
        if unclip_dir is not None and (unclip_dir / "model_index.json").is_file():
            compare = _unclip_side(out, unclip_dir, prompts, samples, candidates, keep, seed)

    seconds = time.perf_counter() - t0
    table_rows = []
    for i, (prompt, what) in enumerate(DEMO_PROMPTS):
        ok = [v for v, p in zip(verdicts, samples.prompt_index) if p == i]
        table_rows.append((f"{i + 1}. {prompt}", f"{what}: {sum(ok)}/{len(ok)} pass the checker"))
    summary = {
        "prompts": len(prompts),
        "candidates": candidates,
        "keep": keep,
        "checker_pass": sum(verdicts) / len(verdicts),
        "seconds": round(seconds, 1),
        "model": pipe.kind,
        "image_prompt": bool(captions),
    }
    extra_sections: list[Any] = []
    if captions:
        extra_sections.append(
            Image(
                "Image prompt: original | top half given | completed",
                (out / "image_prompt.png").read_bytes(),
                "; ".join(captions),
            )
        )
    if compare is not None:
        summary["unclip_checker_pass"] = compare["checker_pass"]
        summary["unclip_seconds"] = compare["seconds"]
        extra_sections.append(
            Image(
                "DALL·E | DALL·E 2 (unCLIP), the same prompts",
                (out / "side_by_side.png").read_bytes(),
                f"best {keep} of {candidates} each; checker pass: DALL·E "
                f"{100 * summary['checker_pass']:.0f}%, unCLIP "
                f"{100 * compare['checker_pass']:.0f}%",
            )
        )
    write_report(
        out / "index.html",
        title="tessera: text to image on shapes",
        sections=[
            Table("Prompts (a row each in the grid, best of the CLIP ranking first)", table_rows),
            Image(
                "Samples",
                (out / "grid.png").read_bytes(),
                f"{candidates} samples per prompt, the best {keep} by CLIP",
            ),
            *extra_sections,
            Text("How these were made", f"tessera demo --seed {seed}: {seconds:.1f} s"),
        ],
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return summary


def _unclip_side(
    out: Path,
    path: Path,
    prompts: list[str],
    dalle_samples: Any,
    candidates: int,
    keep: int,
    seed: int,
) -> dict[str, Any]:
    """The same prompts through the unCLIP pipeline: ``unclip/`` samples and manifest, and
    ``side_by_side.png`` (a row per prompt: DALL·E's kept samples, then unCLIP's)."""
    from tessera.data.images import grid_png, resize_uint8, to_uint8
    from tessera.data.shapes import check_image
    from tessera.pipelines import load_pipeline, write_samples

    t0 = time.perf_counter()
    pipe = load_pipeline(path)
    samples = pipe.generate(prompts, n=candidates, keep=keep, seed=seed)
    write_samples(
        out / "unclip", samples, seed=seed, settings=pipe.settings, extra={"candidates": candidates}
    )
    ours = to_uint8(samples.images)
    verdicts = [bool(check_image(img, p).passed) for img, p in zip(ours, samples.prompts)]
    side = ours.shape[1]
    theirs = [resize_uint8(im, (side, side)) for im in to_uint8(dalle_samples.images)]
    tiles = []
    for i in range(len(prompts)):
        tiles += [t for t, j in zip(theirs, dalle_samples.prompt_index) if j == i]
        tiles += [t for t, j in zip(ours, samples.prompt_index) if j == i]
    (out / "side_by_side.png").write_bytes(grid_png(tiles, ncol=2 * keep))
    return {
        "checker_pass": sum(verdicts) / len(verdicts),
        "seconds": round(time.perf_counter() - t0, 1),
    }

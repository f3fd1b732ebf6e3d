"""The first-minute demo: text -> images with the shipped ``shapes`` models, CLIP-reranked.

A handful of prompts covering what the model was and was not shown in training (seen and
held-out colour-shape pairs, one and two objects, sizes, positions, relations) are sampled
``candidates`` times each; the shipped CLIP keeps the best ``keep``; every kept image is judged
by the shapes checker. An image-prompt example keeps the top half of real eval images and lets
the model complete the rest from the caption (the paper's image-to-image translation).
Writes ``grid.png`` (a row per prompt, the prompt beside it, each image framed green when it
passes the checker and red when not), ``image_prompt.png``, ``index.html`` (self-contained)
and ``manifest.jsonl`` + PNGs, so ``tessera eval fidelity`` can re-score them. With an unCLIP
pipeline, ``edits.png`` shows one example of each of its edits: variations, interpolation,
a text diff and inpainting.

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
    labels = [f"{p} ({what})" for p, what in DEMO_PROMPTS]
    (out / "grid.png").write_bytes(
        labelled_grid(pixels, samples.prompt_index, verdicts, labels, keep)
    )

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

    edits_pipe = pipe if pipe.kind == "unclip" else None
    if edits_pipe is None and compare is not None:
        edits_pipe = load_pipeline(compare["path"])
    edits = None if edits_pipe is None else unclip_edits(out, edits_pipe, seed)

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
    if edits is not None:
        summary["edits"] = edits
        extra_sections.append(
            Image(
                "unCLIP's edits: variations | interpolation | text diff | inpainting",
                (out / "edits.png").read_bytes(),
                "; ".join(f"{k}: {v}" for k, v in edits["rows"].items()),
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
    dalle_pixels = to_uint8(dalle_samples.images)
    theirs = [resize_uint8(im, (side, side)) for im in dalle_pixels]
    dalle_ok = [
        bool(check_image(im, p).passed) for im, p in zip(dalle_pixels, dalle_samples.prompts)
    ]
    tiles, marks = [], []
    for i in range(len(prompts)):
        mine = [k for k, j in enumerate(dalle_samples.prompt_index) if j == i]
        other = [k for k, j in enumerate(samples.prompt_index) if j == i]
        tiles += [theirs[k] for k in mine] + [ours[k] for k in other]
        marks += [dalle_ok[k] for k in mine] + [verdicts[k] for k in other]
    (out / "side_by_side.png").write_bytes(
        grid_png(
            tiles, ncol=2 * keep, row_labels=[f"{p}: DALL·E | unCLIP" for p in prompts], marks=marks
        )
    )
    return {
        "checker_pass": sum(verdicts) / len(verdicts),
        "seconds": round(time.perf_counter() - t0, 1),
        "path": path,
    }


def labelled_grid(
    pixels: np.ndarray,
    prompt_index: list[int],
    verdicts: list[bool],
    labels: list[str],
    per_row: int,
) -> bytes:
    """The demo's grid: a row per prompt (its label beside it), each image framed green when
    it passes the shapes checker, red when it does not."""
    from tessera.data.images import grid_png

    order = sorted(range(len(pixels)), key=lambda k: (prompt_index[k], k))
    return grid_png(
        [pixels[k] for k in order],
        ncol=per_row,
        row_labels=labels,
        marks=[verdicts[k] for k in order],
    )


def unclip_edits(out: Path, pipe: Any, seed: int) -> dict[str, Any]:
    """One example of each unCLIP edit on real eval images, as ``edits.png`` (a row each,
    inputs first): variations, an interpolation, a text diff (recolouring) and an inpainting
    (the right half repainted from a caption). Returns what each row shows and the time."""
    import torch

    from tessera.config.shapes import COLORS, ShapesConfig
    from tessera.data.images import grid_png, to_uint8
    from tessera.data.shapes import ShapesSource
    from tessera.errors import DataError
    from tessera.pipelines.manipulations import inpaint, interpolate, text_diff, variations

    t0 = time.perf_counter()
    size = pipe.image_size
    src = ShapesSource(ShapesConfig(size=size), split="eval", n=64)
    one = next(i for i in range(64) if src.scene(i).relation is None)
    two = next(i for i in range(64) if src.scene(i).relation in ("left of", "right of"))
    other = next(i for i in range(one + 1, 64) if src.scene(i).relation is None)

    def tensor(i: int) -> torch.Tensor:
        return torch.from_numpy(src.image(i)).permute(2, 0, 1).float().div(255)[None]

    gen = torch.Generator(device=pipe.device).manual_seed(seed)
    var = variations(pipe, tensor(one), n=4, generator=gen)
    lerp = interpolate(pipe, tensor(one), tensor(other), frames=4, seed=seed)
    obj = src.scene(one).objects[0]
    new = COLORS[(COLORS.index(obj.color) + 1) % len(COLORS)]
    diff = text_diff(
        pipe, tensor(one), f"a {obj.color} {obj.shape}", f"a {new} {obj.shape}",
        frames=4, max_theta=0.5, seed=seed,
    )  # fmt: skip
    scene = src.scene(two)
    right = max(scene.objects, key=lambda o: o.cx)
    left = min(scene.objects, key=lambda o: o.cx)
    recolour = COLORS[(COLORS.index(right.color) + 1) % len(COLORS)]
    caption = f"a {left.color} {left.shape} to the left of a {recolour} {right.shape}"
    try:
        pipe.check_caption_lengths([caption])
    except DataError:  # a small tokenizer: the changed object alone
        caption = f"a {recolour} {right.shape}"
    mask = torch.zeros(size, size)
    mask[:, size // 2 :] = 1
    painted = inpaint(pipe, tensor(two), mask, caption, n=3, seed=seed).images
    blank = torch.ones(1, 3, size, size)
    rows = [
        [tensor(one), var],
        [tensor(one), tensor(other), lerp[1:3], blank],
        [tensor(one), diff],
        [tensor(two), mask.expand(1, 3, -1, -1), painted],
    ]
    tiles = to_uint8(torch.cat([t for row in rows for t in row]))
    described = {
        "variations": f"input, then 4 variations (eta 1, seed {seed})",
        "interpolation": "A, B, then 2 frames between them",
        "text diff": f"input, then 4 frames from '{obj.color} {obj.shape}' to '{new} {obj.shape}'",
        "inpainting": f"input, mask (white = repaint), 3 results for '{caption}'",
    }
    (out / "edits.png").write_bytes(grid_png(list(tiles), ncol=5, row_labels=list(described)))
    return {"rows": described, "seconds": round(time.perf_counter() - t0, 1)}

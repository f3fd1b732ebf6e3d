"""unCLIP inpainting on the ``shapes`` eval split; prints one JSON line.

    python benchmarks/eval_inpaint.py [--model DIR] [--n 200] [--steps N] [--resample 1]
        [--jump 1] [--seed 0] [--threads 2]

The first ``--n`` eval scenes with two objects: one object (alternately the first and the
second) is changed -- alternately its colour (the next palette colour) and its shape (the
next shape) -- and the half of the canvas that holds it (left/right for a left-of/right-of
scene, top/bottom for above/below) is masked; scenes whose changed object is not inside its
half are skipped and counted. ``inpaint`` gets the image, the mask and the scene's canonical
caption with the object changed, one sample per scene (unranked, seed ``--seed``).

Fields: ``pass`` -- the strict checker on the new caption (per claim, seen and held-out new
pairs); ``still_original`` -- the share that still passes the *original* caption (the edit
did not happen); ``mean_abs_change_outside_mask`` -- mean |result - input| over the pixels
outside the mask, 0..255 at the output size (the bar: < 2/255); ``seconds_per_image``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="unCLIP pipeline folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--steps", type=int, default=None, help="decoder steps (default: pipeline's)")
    ap.add_argument("--resample", type=int, default=1)
    ap.add_argument("--jump", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    from tessera.config.shapes import COLORS, SHAPES, ShapesConfig
    from tessera.data.images import to_uint8
    from tessera.data.shapes import check_image
    from tessera.data.shapes.captions import canonical_prompt
    from tessera.data.shapes.dataset import ShapesSource
    from tessera.evaluation.fidelity import CLAIMS, FidelityTally
    from tessera.pipelines import load_pipeline
    from tessera.pipelines.manipulations import inpaint

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model or "unclip")
    size = pipe.image_size
    src = ShapesSource(ShapesConfig(size=size), split="eval")
    tally, kept_original, outside, skipped = FidelityTally(), 0, [], 0
    done, i, t0 = 0, 0, time.perf_counter()
    while done < args.n:
        scene = src.scene(i)
        i += 1
        if scene.relation is None:
            continue
        which = done % 2
        obj = scene.objects[which]
        if done // 2 % 2 == 0:
            new = dataclasses.replace(obj, color=COLORS[(COLORS.index(obj.color) + 1) % 6])
        else:
            new = dataclasses.replace(obj, shape=SHAPES[(SHAPES.index(obj.shape) + 1) % 3])
        objects = list(scene.objects)
        objects[which] = new
        edited = canonical_prompt(dataclasses.replace(scene, objects=tuple(objects)))
        mask = torch.zeros(size, size)
        lo, hi = obj.side / 2, size / 2
        if scene.relation in ("left of", "right of"):
            right = obj.cx > hi
            inside = obj.cx - lo >= hi if right else obj.cx + lo <= hi
            (mask[:, size // 2 :] if right else mask[:, : size // 2]).fill_(1)
        else:
            low = obj.cy > hi
            inside = obj.cy - lo >= hi if low else obj.cy + lo <= hi
            (mask[size // 2 :] if low else mask[: size // 2]).fill_(1)
        if not inside:
            skipped += 1
            continue
        image = torch.from_numpy(src.image(i - 1)).permute(2, 0, 1).float().div(255)
        out = inpaint(
            pipe,
            image,
            mask,
            edited,
            n=1,
            seed=args.seed + done,
            steps=args.steps,
            resample=args.resample,
            jump=args.jump,
        )
        result = to_uint8(out.images)[0]  # (S, S, 3)
        tally.add(edited, result)
        kept_original += bool(check_image(result, src.prompt(i - 1)).passed)
        keep = (mask == 0).numpy()
        diff = np.abs(result.astype(np.float64) - src.image(i - 1).astype(np.float64))
        outside.append(float(diff[keep].mean()))
        done += 1
    metrics = tally.metrics()
    record = {
        "benchmark": "unclip_inpaint_shapes",
        "model": str(args.model or "unclip"),
        "n": args.n,
        "pass": {k: metrics[k] for k in ("strict", "strict_seen", "strict_held_out", "n", *CLAIMS)},
        "still_original": round(kept_original / args.n, 4),
        "mean_abs_change_outside_mask": round(float(np.mean(outside)), 4),
        "max_abs_change_outside_mask_per_image": round(float(np.max(outside)), 4),
        "skipped_scenes": skipped,
        "seconds_per_image": round((time.perf_counter() - t0) / args.n, 3),
        "settings": {
            "steps": args.steps or pipe.settings.decoder_steps,
            "resample": args.resample,
            "jump": args.jump,
            "decoder_guidance": pipe.settings.decoder_guidance,
            "eta": 1.0,
            "seed": args.seed,
            "threads": args.threads,
        },
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()

"""unCLIP variations and text diffs on the ``shapes`` eval split; prints one JSON line.

    python benchmarks/eval_unclip_manipulations.py [--model DIR] [--n 200] [--seed 0]

- **variations**: each of the first ``n`` eval images is inverted to (z_i, x_T) and decoded
  once with DDIM eta ``--eta`` (the pipeline's decoder guidance) through the upsamplers.
  ``variations_pass``: share passing the checker for the *source* image's canonical caption;
  ``mean_abs_pixel_diff``: mean |variation - source| per pixel (0..255, at the output size),
  so passing by copying the input would show as a difference near 0.
- **text diffs**: the first ``n`` one-object eval images, each recoloured to the next palette
  colour: ``text_diff(from="a {colour} {shape}", to="a {new colour} {shape}")`` with
  ``--frames`` frames up to ``--max-theta``; the last frame is judged against the image's
  canonical caption with the colour replaced (so size and position must be kept).
  ``textdiff_pass`` is that share; per-claim rates say which claim failed.

Issue 16's bars: variations >= 0.90, text diffs >= 0.6.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="unCLIP pipeline folder (default: the shipped one)")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--eta", type=float, default=1.0)
    ap.add_argument("--frames", type=int, default=5)
    ap.add_argument("--max-theta", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip", default="", help="comma list: variations,textdiff")
    args = ap.parse_args()

    import numpy as np
    import torch

    from tessera.checkpoint import shipped_dir
    from tessera.config.shapes import COLORS, ShapesConfig
    from tessera.data.images import to_uint8
    from tessera.data.shapes import check_image
    from tessera.data.shapes.dataset import ShapesSource
    from tessera.evaluation.fidelity import CLAIMS, FidelityTally
    from tessera.pipelines import load_pipeline
    from tessera.pipelines.manipulations import text_diff, variations

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model or shipped_dir("unclip"))
    size = pipe.image_size
    src = ShapesSource(ShapesConfig(size=size), split="eval")
    skip = set(filter(None, args.skip.split(",")))
    record: dict = {
        "benchmark": "unclip_manipulations_shapes",
        "model": str(args.model),
        "n": args.n,
    }

    def claims(t: FidelityTally) -> dict:
        m = t.metrics()
        return {k: m[k] for k in ("strict", "strict_seen", "strict_held_out", "n", *CLAIMS)}

    def tensor(i: int) -> torch.Tensor:
        return torch.from_numpy(src.image(i)).permute(2, 0, 1).float().div(255)

    if "variations" not in skip:
        g = torch.Generator(device=pipe.device).manual_seed(args.seed)
        tally, diffs, t0 = FidelityTally(), [], time.perf_counter()
        for i in range(args.n):
            out = variations(pipe, tensor(i), n=1, eta=args.eta, generator=g)
            img = to_uint8(out)[0]
            tally.add(src.prompt(i), img)
            diffs.append(float(np.abs(img.astype(np.float64) - src.image(i)).mean()))
        record["variations"] = {
            "eta": args.eta,
            "guidance": pipe.settings.decoder_guidance,
            "pass": claims(tally),
            "mean_abs_pixel_diff": round(float(np.mean(diffs)), 3),
            "seconds_per_image": round((time.perf_counter() - t0) / args.n, 3),
        }

    if "textdiff" not in skip:
        tally, t0, done, i = FidelityTally(), time.perf_counter(), 0, 0
        colour_kept = 0
        while done < args.n:
            scene = src.scene(i)
            if scene.relation is None:
                obj = scene.objects[0]
                new = COLORS[(COLORS.index(obj.color) + 1) % len(COLORS)]
                prompt = src.prompt(i)
                edited = prompt.replace(f" {obj.color} ", f" {new} ", 1)
                frames = text_diff(
                    pipe,
                    tensor(i),
                    f"a {obj.color} {obj.shape}",
                    f"a {new} {obj.shape}",
                    frames=args.frames,
                    max_theta=args.max_theta,
                    seed=args.seed,
                )
                last = to_uint8(frames[-1:])[0]
                tally.add(edited, last)
                colour_kept += bool(check_image(last, prompt).passed)
                done += 1
            i += 1
        record["textdiff"] = {
            "frames": args.frames,
            "max_theta": args.max_theta,
            "pass_edited_caption": claims(tally),
            "still_passes_original_caption": round(colour_kept / args.n, 4),
            "seconds_per_image": round((time.perf_counter() - t0) / args.n, 3),
        }
    print(json.dumps(record))


if __name__ == "__main__":
    main()

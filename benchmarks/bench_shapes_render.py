"""Throughput of the shapes renderer (and checker) on ONE CPU thread; prints one JSON line.

    python benchmarks/bench_shapes_render.py [--n 5000] [--repeats 5] [--size 64]

Scenes are sampled outside the timed region for ``images_per_s_*`` (pure rendering);
``pipeline_images_per_s_median`` times sample_scene + render_scene together, and
``checker_images_per_s_median`` times check_image on the rendered images with their
canonical prompts. Goal (spec of the task): >= 2000 rendered images/s at 64 px.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

# One thread everywhere, set before NumPy/torch (imported in main) start their thread pools.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"


def _rate(fn, n: int, repeats: int) -> list[float]:
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(n / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="images per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--checker-n", type=int, default=2000, help="images for the checker timing")
    args = ap.parse_args()

    import torch

    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import canonical_prompt, check_image, render_scene, sample_scene

    torch.set_num_threads(1)

    config = ShapesConfig(size=args.size)
    k = config.supersample
    scenes = [sample_scene(config, "train", i) for i in range(args.n)]
    render_scene(scenes[0], supersample=k)  # warm the patch cache outside the timing

    render = _rate(lambda: [render_scene(s, supersample=k) for s in scenes], args.n, args.repeats)
    pipeline = _rate(
        lambda: [
            render_scene(sample_scene(config, "train", i), supersample=k) for i in range(args.n)
        ],
        args.n,
        args.repeats,
    )
    m = min(args.checker_n, args.n)
    images = [render_scene(s, supersample=k) for s in scenes[:m]]
    prompts = [canonical_prompt(s) for s in scenes[:m]]
    check = _rate(lambda: [check_image(x, p) for x, p in zip(images, prompts)], m, 3)

    print(
        json.dumps(
            {
                "benchmark": "shapes_render",
                "size": args.size,
                "threads": 1,
                "images_per_s_median": round(statistics.median(render), 1),
                "images_per_s_min": round(min(render), 1),
                "images_per_s_max": round(max(render), 1),
                "repeats": args.repeats,
                "n": args.n,
                "pipeline_images_per_s_median": round(statistics.median(pipeline), 1),
                "checker_images_per_s_median": round(statistics.median(check), 1),
            }
        )
    )


if __name__ == "__main__":
    main()

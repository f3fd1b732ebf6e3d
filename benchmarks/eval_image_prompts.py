"""Image prompts on ``shapes``: keep the top half of eval images, complete them from their
captions, judge the completions; prints one JSON line.

    python benchmarks/eval_image_prompts.py PIPELINE [--n 200] [--seed 0] [--threads 2]

The first ``--n`` eval images (rendered at the pipeline's image size) are tokenized by the
pipeline's dVAE; the top ``grid/2`` token rows are kept and the transformer samples the rest
from the image's canonical caption (the paper's image-to-image translation), once, with the
pipeline's default sampling settings and no reranking. ``pass_rate``: the share of
completions that pass the shapes checker for that caption; per claim as well.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipeline")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    from tessera.config.shapes import ShapesConfig
    from tessera.data.images import to_uint8
    from tessera.data.shapes import ShapesSource
    from tessera.evaluation.fidelity import FidelityTally
    from tessera.pipelines import load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.pipeline)
    pipe.reranker = None  # completions are judged as drawn
    size, rows = pipe.image_size, pipe.model.config.grid_size // 2
    src = ShapesSource(ShapesConfig(size=size), split="eval", n=args.n)
    tally = FidelityTally()
    t0 = time.perf_counter()
    passed = 0
    for s in range(0, args.n, args.batch):
        idx = range(s, min(s + args.batch, args.n))
        real = np.stack([src.image(i) for i in idx])
        captions = [src.prompt(i) for i in idx]
        x = torch.from_numpy(real).permute(0, 3, 1, 2).float() / 255
        out = pipe.generate(captions, n=1, image_prompt=x, keep_rows=rows, seed=args.seed + s)
        for img, cap in zip(to_uint8(out.images), captions):
            passed += bool(tally.add(cap, img).passed)
    report = tally.metrics()
    print(
        json.dumps(
            {
                "benchmark": "image_prompts_shapes",
                "pipeline": str(args.pipeline),
                "n": args.n,
                "rows_kept": rows,
                "grid": pipe.model.config.grid_size,
                "pass_rate": round(passed / args.n, 4),
                "metrics": report,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )


if __name__ == "__main__":
    main()

"""Caption fidelity of a text->image pipeline on ``shapes``; prints one JSON line.

    python benchmarks/eval_dalle_shapes.py RUN_DIR/final [--n-prompts 200] [--samples 1]
        [--top-k 0] [--temperature 1] [--guidance 1] [--seed 0] [--threads 2]
        [--clip CLIP_DIR --candidates 8 --keep 1]   # CLIP reranking: judge the best K of N

The first ``n`` canonical eval prompts (about a quarter name a colour-shape pair held out of
training) are sampled ``--samples`` times each, decoded by the pipeline's dVAE and judged by
the shapes checker (strict: every claim of the prompt must hold). Fields: ``strict`` (all
samples), ``n``, per-claim pass rates, ``strict_seen`` / ``strict_held_out`` and their sample
counts, the sampling settings,
``dvae_ceiling`` (the same checker on the dVAE's reconstructions of the eval images for the
same prompts: what a perfect prior could reach through this dVAE), and timing.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "pipeline", help="pipeline directory (tessera dalle train ... -> RUN_DIR/final)"
    )
    ap.add_argument("--n-prompts", type=int, default=200)
    ap.add_argument("--samples", type=int, default=1, help="samples per prompt")
    ap.add_argument(
        "--held-out-share",
        type=float,
        default=None,
        help="share of prompts naming a held-out pair (default: eval order, ~1/4)",
    )
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clip", help="CLIP checkpoint: rerank --candidates per prompt, keep --keep")
    ap.add_argument("--candidates", type=int, default=8)
    ap.add_argument("--keep", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    from tessera.config.sampling import DalleSampling
    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import ShapesSource, check_image
    from tessera.evaluation.fidelity import fidelity_prompts, generate_and_score
    from tessera.pipelines import load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.pipeline)
    if args.clip:
        from tessera.sampling.rerank import load_scorer

        pipe.reranker = load_scorer(args.clip)
    settings = DalleSampling(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, guidance=args.guidance
    )
    t0 = time.perf_counter()
    prompts = fidelity_prompts(args.n_prompts, held_out_share=args.held_out_share)
    report, _ = generate_and_score(
        pipe,
        prompts,
        samples_per_prompt=args.candidates if args.clip else args.samples,
        keep=args.keep if args.clip else None,
        settings=settings,
        seed=args.seed,
    )
    elapsed = time.perf_counter() - t0

    size = pipe.vae.config.image_size
    src = ShapesSource(ShapesConfig(size=size), split="eval", n=args.n_prompts)
    ok = 0
    for i in range(args.n_prompts):  # the dVAE's ceiling on the first n eval images
        x = torch.from_numpy(src.image(i)).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            rec = pipe.vae.decode(pipe.vae.encode(x))[0]
        ok += int(check_image(rec, src.prompt(i)).passed)
    report.update(
        {
            "bench": "dalle_shapes_fidelity",
            "pipeline": args.pipeline,
            "settings": vars(args),
            "dvae_ceiling": ok / args.n_prompts,
            "sampling_s": round(elapsed, 2),
            "images_per_s": round(report["n"] / elapsed, 2),
        }
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()

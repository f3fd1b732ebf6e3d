"""Diversity and speed of a text->image pipeline (DALL·E or unCLIP); prints one JSON line.

    python benchmarks/eval_diversity.py --model dalle|unclip|DIR [--prompts FILE] [--k 50]

For each of ``k`` prompts (default: the first 50 of ``tessera eval prompts --n 300
--held-out-share 0.67``'s list, regenerated here), ``--samples`` 8 unranked samples; every
sample is embedded by one CLIP (default: the shipped shapes CLIP, so both generators are
measured in the same space). ``diversity``: mean over prompts of the mean pairwise cosine
distance (1 - cos) between the 8 embeddings (the unCLIP paper's human raters preferred its
diversity over GLIDE's); ``seconds_per_image``: generation wall time / images.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dalle")
    ap.add_argument("--prompts", help="file with one prompt per line")
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--clip", help="CLIP that embeds the samples (default: shipped)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from pathlib import Path

    import torch

    from tessera.checkpoint import shipped_dir
    from tessera.evaluation.fidelity import fidelity_prompts
    from tessera.pipelines import load_pipeline
    from tessera.sampling.rerank import load_scorer

    torch.set_num_threads(args.threads)
    folder = {"dalle": shipped_dir("pipeline"), "unclip": shipped_dir("unclip")}.get(args.model)
    pipe = load_pipeline(folder or args.model)
    if args.prompts:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        prompts = [p.strip() for p in lines if p.strip()][: args.k]
    else:
        prompts = fidelity_prompts(300, held_out_share=0.67)[: args.k]
    scorer = load_scorer(args.clip or shipped_dir("pipeline", "clip"))
    t0 = time.perf_counter()
    samples = pipe.generate(prompts, n=args.samples, seed=args.seed)
    seconds = time.perf_counter() - t0
    emb = scorer.embed_images(samples.images).float()  # (k * samples, D), unit norm
    emb = emb.view(len(prompts), args.samples, -1)
    cos = emb @ emb.transpose(1, 2)  # (k, s, s)
    off = ~torch.eye(args.samples, dtype=torch.bool)
    per_prompt = (1 - cos[:, off]).mean(1)
    print(
        json.dumps(
            {
                "benchmark": "diversity",
                "model": args.model,
                "kind": pipe.kind,
                "prompts": len(prompts),
                "samples": args.samples,
                "diversity": round(float(per_prompt.mean()), 4),
                "seconds_per_image": round(seconds / len(samples.prompts), 4),
                "image_size": pipe.image_size,
                "threads": args.threads,
            }
        )
    )


if __name__ == "__main__":
    main()

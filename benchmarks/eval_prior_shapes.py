"""How close the unCLIP priors' sampled image embeddings come to the true ones on ``shapes``;
prints one JSON line.

    python benchmarks/eval_prior_shapes.py [--diffusion RUN/final] [--ar RUN/final]
        [--clip DIR] [--tokenizer DIR] [--n 500] [--steps 64] [--candidates 2]
        [--guidance 1.0] [--train-n 4096] [--batch 250] [--threads 1] [--seed 0]

The first ``--n`` eval images of the ``shapes`` eval split (data seed 0, the split the training
hook uses) are embedded by the CLIP (default: the shipped shapes pipeline's) as the true z_i;
each image's canonical caption (its first) is tokenized (no BPE dropout) and embedded as z_t.
Each prior samples one z_i per caption (best of ``--candidates`` by z_i . z_t, generator seeded
with ``--seed``); the diffusion prior with ``--steps`` DDIM steps (η = 0).

Fields: ``baselines``: ``cos_mean_train_z_i`` (the mean of the first ``--train-n`` training
images' z_i, one vector for every caption) and ``cos_z_t`` (the caption's own text
embedding), each the mean cosine to the true z_i; ``cos_mean_train_z_i_ceiling`` is the cosine
of a per-caption oracle: the mean z_i of the training images sharing the caption's exact
canonical text, where any (``oracle_coverage``: the share that has one). Per prior:
``cos_z_i`` (mean cosine of sample and true z_i, with ``cos_z_i_std``), ``cos_to_z_t`` (of
sample and z_t), ``sample_s`` and the prior's ``parameters`` (and for the AR prior its fitted
``components`` and ``pca_error``). ``timing.foreign_cpu_frac``: see _common.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from _common import Contention

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir():
    sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--diffusion", help="diffusion prior checkpoint (RUN/final)")
    ap.add_argument("--ar", help="AR prior checkpoint (RUN/final)")
    ap.add_argument("--clip", help="CLIP checkpoint (default: the shipped shapes CLIP)")
    ap.add_argument("--tokenizer", help="tokenizer (default: the shipped shapes tokenizer)")
    ap.add_argument("--n", type=int, default=500, help="eval captions")
    ap.add_argument("--steps", type=int, default=64, help="DDIM steps of the diffusion prior")
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--guidance", type=float, default=1.0)
    ap.add_argument("--train-n", type=int, default=4096, help="training images for the mean")
    ap.add_argument("--batch", type=int, default=250, help="captions per sampling call")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from tessera.checkpoint import load, shipped_dir
    from tessera.sampling.prior import sample_prior
    from tessera.sampling.unclip import embed_images
    from tessera.training.data import shapes_image_batches
    from tessera.training.stages.prior import embed_texts

    torch.set_num_threads(args.threads)
    base = shipped_dir("pipeline")
    clip = load(args.clip or base / "clip", kind="clip").eval()
    tok = load(args.tokenizer or base / "tokenizer", kind="tokenizer")
    size = clip.config.image_size

    def first(split: str, n: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
        """(z_i (n, D), canonical captions, ids) of the first n images of a split."""
        stream = shapes_image_batches(
            split=split, image_size=size, batch_size=250, seed=0, rank=0, world_size=1
        )
        zs, caps = [], []
        while sum(z.shape[0] for z in zs) < n:
            b = next(stream)
            zs.append(embed_images(clip, b["images"]))
            caps += [c[0] if isinstance(c, list | tuple) else c for c in b["captions"]]
        return torch.cat(zs)[:n], caps[:n], tok.encode_batch(caps[:n], add_eos=True).ids

    with Contention() as contention:
        z_i, captions, ids = first("eval", args.n)
        z_t = embed_texts(clip, ids)
        train_z, train_caps, _ = first("train", args.train_n)
        mean_z = F.normalize(train_z.mean(0, keepdim=True), dim=-1)
        by_caption: dict[str, list[int]] = {}
        for j, c in enumerate(train_caps):
            by_caption.setdefault(c, []).append(j)
        oracle = [
            F.cosine_similarity(train_z[by_caption[c]].mean(0), z_i[i], dim=0).item()
            for i, c in enumerate(captions)
            if c in by_caption
        ]
        report: dict = {
            "bench": "prior_shapes_eval",
            "n": args.n,
            "baselines": {
                "cos_mean_train_z_i": round(float(F.cosine_similarity(mean_z, z_i).mean()), 4),
                "cos_z_t": round(float(F.cosine_similarity(z_t, z_i).mean()), 4),
                "cos_mean_train_z_i_ceiling": (
                    round(sum(oracle) / len(oracle), 4) if oracle else None
                ),
                "oracle_coverage": round(len(oracle) / args.n, 4),
            },
        }
        for name, path, kind in (
            ("diffusion", args.diffusion, "prior"),
            ("ar", args.ar, "ar_prior"),
        ):
            if path is None:
                continue
            prior = load(path, kind=kind).eval()
            g = torch.Generator().manual_seed(args.seed)
            t0 = time.perf_counter()
            out = [
                sample_prior(
                    prior,
                    ids[s : s + args.batch],
                    z_t[s : s + args.batch],
                    steps=args.steps,
                    guidance=args.guidance,
                    candidates=args.candidates,
                    generator=g,
                )
                for s in range(0, args.n, args.batch)
            ]
            elapsed = time.perf_counter() - t0
            z = torch.cat(out)
            cos = F.cosine_similarity(z, z_i)
            entry = {
                "checkpoint": path,
                "cos_z_i": round(float(cos.mean()), 4),
                "cos_z_i_std": round(float(cos.std()), 4),
                "cos_to_z_t": round(float(F.cosine_similarity(z, z_t).mean()), 4),
                "sample_s": round(elapsed, 2),
                "parameters": sum(p.numel() for p in prior.parameters()),
            }
            if kind == "ar_prior":
                entry["components"] = prior.components
                entry["pca_error"] = round(float(prior.pca_error), 5)
            report[name] = entry
    report["timing"] = {
        "foreign_cpu_frac": None if contention.foreign is None else round(contention.foreign, 3)
    }
    report["settings"] = vars(args)
    print(json.dumps(report))


if __name__ == "__main__":
    main()

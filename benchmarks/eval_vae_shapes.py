"""Reconstruction quality of a dVAE checkpoint on the ``shapes`` eval split; prints one JSON line.

    python benchmarks/eval_vae_shapes.py RUN_DIR/final [--n 1000] [--batch 100] [--threads 2]

Every eval image i (first ``n`` of the split, rendered at the model's image size) goes through
argmax encode + median decode (``model.encode`` / ``model.decode``: sigmoid(mu)); the
reconstruction is rounded to uint8 and scored against the original:

- ``psnr_db_mean`` / ``psnr_db_median``: PSNR per image (uint8 vs uint8, peak 255).
- ``checker_pass_rate``: fraction of reconstructions that pass ``check_image`` for the image's
  own canonical prompt; ``checker_pass_rate_original``: the same for the originals (the ceiling).
- ``claims``: pass rate per claim of those reconstructions (count, colour+shape, ...).
- ``codes_used``: distinct tokens over all ``n`` images.

Issue 4's bar for the ``shapes`` preset: PSNR >= 30 dB and pass rate >= 0.98.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", help="dVAE checkpoint directory (e.g. RUN_DIR/final)")
    ap.add_argument("--n", type=int, default=1000, help="eval images (default 1000)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    import tessera
    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import check_image
    from tessera.data.shapes.dataset import ShapesSource
    from tessera.evaluation.fidelity import CLAIMS, FidelityTally

    torch.set_num_threads(args.threads)
    model = tessera.load(args.checkpoint, kind="vae")
    model.eval()
    size = model.config.image_size
    src = ShapesSource(ShapesConfig(size=size), split="eval", n=args.n)

    tally = FidelityTally()  # per-claim verdicts on the reconstructions
    t0 = time.perf_counter()
    psnrs: list[float] = []
    passed = passed_orig = 0
    # a factorised tokenizer's structure and colour codes share one id space
    used = torch.zeros(sum(model.config.factor_vocabs) or model.config.vocab_size, dtype=torch.bool)
    for start in range(0, args.n, args.batch):
        idx = range(start, min(start + args.batch, args.n))
        originals = np.stack([src.image(i) for i in idx])  # (B, S, S, 3) uint8
        images = torch.from_numpy(originals).permute(0, 3, 1, 2).float().div_(255.0)
        with torch.no_grad():
            tokens = model.encode(images)
            recon = model.decode(tokens)
        used[tokens.flatten().unique()] = True
        recon_u8 = (recon.permute(0, 2, 3, 1).mul(255.0).round().clamp(0, 255)).to(torch.uint8)
        recon_u8 = recon_u8.numpy()
        for j, i in enumerate(idx):
            prompt = src.prompt(i)
            err = (recon_u8[j].astype(np.float64) - originals[j].astype(np.float64)) ** 2
            mse = max(float(err.mean()), 1e-10)
            psnrs.append(10.0 * np.log10(255.0**2 / mse))
            passed += bool(tally.add(prompt, recon_u8[j]).passed)
            passed_orig += bool(check_image(originals[j], prompt).passed)

    record = {
        "benchmark": "vae_shapes_quality",
        "checkpoint": str(args.checkpoint),
        "n": args.n,
        "image_size": size,
        "psnr_db_mean": round(float(np.mean(psnrs)), 3),
        "psnr_db_median": round(float(np.median(psnrs)), 3),
        "psnr_db_p05": round(float(np.percentile(psnrs, 5)), 3),
        "checker_pass_rate": round(passed / args.n, 4),
        "checker_pass_rate_original": round(passed_orig / args.n, 4),
        "claims": {c: tally.metrics()[c] for c in CLAIMS},
        "codes_used": int(used.sum()),
        "vocab_size": model.config.vocab_size,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()

"""unCLIP decoder + upsamplers on the ``shapes`` eval split; prints one JSON line.

    python benchmarks/eval_unclip_decoder.py --decoder RUN/final --up64 RUN64/final \
        --up128 RUN128/final [--n 500] [--steps 25] [--guidance 3] [--up-steps 7]

For each of the first ``n`` eval images (rendered at the decoder's size) with its canonical
caption:

- **decode**: the image's CLIP embedding z_i and its caption -> the decoder (DDIM ``steps``,
  guidance ``guidance``, eta 0, fresh noise) -> 32 px; then each upsampler (DDIM
  ``up_steps``) -> 64 -> 128 px. ``decode_pass`` is the checker's strict pass rate for the
  image's own caption at every size (``seen`` / ``held_out`` buckets: held-out colour-shape
  pairs never appear in training).
- **inversion round trip**: DDIM-invert the image under the decoder (z_i + caption,
  ``invert_steps``), decode with eta 0 from that x_T: ``inversion_pass`` and PSNR (dB).
- seconds per image for each part (``--threads`` CPU threads).

Issue 15's bars: decode + upsample to 128 px passes >= 0.90; the round trip >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decoder", required=True)
    ap.add_argument("--up64", help="first upsampler checkpoint (32 -> 64)")
    ap.add_argument("--up128", help="second upsampler checkpoint (64 -> 128)")
    ap.add_argument("--clip", help="CLIP checkpoint (default: the shipped shapes CLIP)")
    ap.add_argument("--tokenizer", help="when the decoder folder has none (default: shipped)")
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=3.0)
    ap.add_argument("--up-steps", type=int, default=7)
    ap.add_argument("--sampler", default="ddim", help="decoder sampler: ddim | ddpm")
    ap.add_argument("--no-caption", action="store_true", help="decode from z_i alone")
    ap.add_argument("--invert-steps", type=int, default=50)
    ap.add_argument("--no-inversion", action="store_true")
    ap.add_argument("--autocast", action="store_true", help="bf16 autocast while sampling")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import torch

    from tessera.checkpoint import load, load_checkpoint, shipped_dir
    from tessera.config.shapes import ShapesConfig
    from tessera.data.images import psnr, to_uint8
    from tessera.data.shapes.dataset import ShapesSource
    from tessera.evaluation.fidelity import CLAIMS, FidelityTally
    from tessera.pipelines.manipulations import encode_captions, reconstruct
    from tessera.sampling.unclip import decode, embed_images, upsample

    torch.set_num_threads(args.threads)
    loaded = load_checkpoint(args.decoder, kind="decoder")
    decoder, tok = loaded.obj.eval(), loaded.tokenizer
    if tok is None:  # a pipeline folder keeps the tokenizer beside its decoder
        tok = load(args.tokenizer or shipped_dir("unclip", "tokenizer"), kind="tokenizer")
    clip = load(args.clip or shipped_dir("pipeline", "clip"), kind="clip").eval()
    ups = [load(p, kind="upsampler").eval() for p in (args.up64, args.up128) if p]
    size = decoder.config.image_size
    src = ShapesSource(ShapesConfig(size=size), split="eval", n=args.n)
    sizes = [size] + [u.config.image_size for u in ups]
    tallies = {s: FidelityTally() for s in sizes}
    inv_tally, psnrs = FidelityTally(), []
    seconds = {"decode": 0.0, "invert_and_decode": 0.0, **{f"upsample_{s}": 0.0 for s in sizes[1:]}}
    g = torch.Generator().manual_seed(args.seed)
    t_all = time.perf_counter()
    for lo in range(0, args.n, args.batch):
        idx = range(lo, min(lo + args.batch, args.n))
        images = torch.from_numpy(np.stack([src.image(i) for i in idx]))
        images = images.permute(0, 3, 1, 2).float().div(255)
        prompts = [src.prompt(i) for i in idx]
        z_i = embed_images(clip, images)
        text = encode_captions(tok, prompts)
        t0 = time.perf_counter()
        out = decode(
            decoder,
            z_i,
            None if args.no_caption else text,
            steps=args.steps,
            guidance=args.guidance,
            generator=g,
            sampler=args.sampler,
            autocast=args.autocast,
        )
        seconds["decode"] += time.perf_counter() - t0
        for p, im in zip(prompts, to_uint8(out), strict=True):
            tallies[size].add(p, im)
        for up in ups:
            t0 = time.perf_counter()
            out = upsample(up, out, steps=args.up_steps, generator=g, autocast=args.autocast)
            seconds[f"upsample_{up.config.image_size}"] += time.perf_counter() - t0
            for p, im in zip(prompts, to_uint8(out), strict=True):
                tallies[up.config.image_size].add(p, im)
        if not args.no_inversion:
            t0 = time.perf_counter()
            r = reconstruct(
                decoder,
                clip,
                images,
                tokenizer=tok,
                captions=prompts,
                steps=args.invert_steps,
                autocast=args.autocast,
            )
            seconds["invert_and_decode"] += time.perf_counter() - t0
            psnrs += psnr(r.images, images).tolist()
            for p, im in zip(prompts, to_uint8(r.images), strict=True):
                inv_tally.add(p, im)

    def rates(t: FidelityTally) -> dict[str, float]:
        m = t.metrics()
        keys = ("strict", "strict_seen", "strict_held_out", "n", "n_held_out", *CLAIMS)
        return {k: m[k] for k in keys}

    record = {
        "benchmark": "unclip_decoder_shapes",
        "decoder": args.decoder,
        "upsamplers": [args.up64, args.up128],
        "n": args.n,
        "steps": args.steps,
        "guidance": args.guidance,
        "sampler": args.sampler,
        "caption": not args.no_caption,
        "up_steps": args.up_steps,
        "decode_pass": {str(s): rates(tallies[s]) for s in sizes},
        "seconds_per_image": {k: round(v / args.n, 4) for k, v in seconds.items()},
        "threads": args.threads,
        "autocast": args.autocast,
        "seconds": round(time.perf_counter() - t_all, 1),
    }
    if not args.no_inversion:
        record["invert_steps"] = args.invert_steps
        record["inversion_pass"] = rates(inv_tally)
        record["inversion_psnr_db_mean"] = round(float(np.mean(psnrs)), 3)
        record["inversion_psnr_db_median"] = round(float(np.median(psnrs)), 3)
    print(json.dumps(record))


if __name__ == "__main__":
    main()

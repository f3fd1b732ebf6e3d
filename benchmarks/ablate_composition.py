"""One row of the zero-shot composition ablation (issue 27); prints one JSON line.

    python benchmarks/ablate_composition.py --name NAME --run-dir DIR [--vae VAE_DIR]
        [--preset shapes] [--steps 2000] [--threads 1] [--guidance 1.5 ...] [KEY=VALUE ...]

Trains the DALL·E transformer at ``--preset`` (``shapes``: factorised tokens; ``shapes-rgb``
with an RGB tokenizer as ``--vae``: one code per cell) with the given overrides (``tessera
dalle train``; re-running resumes) on the given image tokenizer (default: the shipped
pipeline's dVAE), then measures it with the project protocol: the first 300 canonical eval
prompts with two thirds naming a held-out colour-shape pair (``tessera eval prompts --n 300
--held-out-share 0.67``), seed 0, unranked (1 sample) and CLIP-reranked 8 -> 1 with the
shipped CLIP, at each ``--guidance``. ``--no-train`` measures ``--pipeline`` as it is. Each
measurement is ``benchmarks/eval_dalle_shapes.py``'s report; the row keeps strict pass rates
of both buckets and every claim's rate per bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "src" / "tessera" / "assets" / "shapes" / "pipeline"


def _eval(pipeline: Path, guidance: float, threads: int, rerank: bool, extra: list[str]) -> dict:
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "eval_dalle_shapes.py"),
        str(pipeline),
        "--n-prompts",
        "300",
        "--held-out-share",
        "0.67",
        "--temperature",
        "0.8",
        "--top-k",
        "64",
        "--guidance",
        str(guidance),
        "--threads",
        str(threads),
        "--seed",
        "0",
        *extra,
    ]
    if rerank:
        cmd += ["--clip", str(SHIPPED / "clip"), "--candidates", "8", "--keep", "1"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {
        "strict": round(r["strict"], 4),
        "seen": round(r["strict_seen"], 4),
        "held_out": round(r["strict_held_out"], 4),
        "color_shape_seen": r["claims_seen"]["color_shape"],
        "color_shape_held_out": r["claims_held_out"]["color_shape"],
        "dvae_ceiling": r["dvae_ceiling"],
        "claims_seen": r["claims_seen"],
        "claims_held_out": r["claims_held_out"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True)
    ap.add_argument("--run-dir", type=Path)
    ap.add_argument("--vae", type=Path, default=SHIPPED / "vae")
    ap.add_argument("--tokenizer", type=Path, default=SHIPPED / "tokenizer")
    ap.add_argument("--preset", default="shapes", help="the dalle preset (shapes-rgb: RGB codes)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--guidance", type=float, nargs="+", default=[1.5])
    ap.add_argument("--no-train", action="store_true", help="measure --pipeline as it is")
    ap.add_argument("--pipeline", type=Path, default=SHIPPED)
    ap.add_argument("--no-rerank", action="store_true")
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE for tessera dalle train")
    args = ap.parse_args()

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    row: dict = {"name": args.name, "steps": None if args.no_train else args.steps}
    row.update(preset=args.preset, overrides=args.overrides)
    pipeline = args.pipeline
    if not args.no_train:
        if args.run_dir is None:
            ap.error("--run-dir is needed to train")
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "tessera",
                "dalle",
                "train",
                "--preset",
                args.preset,
                "--vae",
                str(args.vae),
                "--tokenizer",
                str(args.tokenizer),
                "--run-dir",
                str(args.run_dir),
                "--steps",
                str(args.steps),
                "--checkpoint-every",
                "500",
                "--seed",
                "0",
                "--no-progress",
                "train.sample_every=0",
                *args.overrides,
            ],
            check=True,
            env=env,
        )
        row["train_s"] = round(time.perf_counter() - t0, 1)
        pipeline = args.run_dir / "final"
        summary = args.run_dir / "summary.json"
        if summary.exists():
            s = json.loads(summary.read_text())
            row["train_seconds"] = s.get("seconds")
    row["pipeline"] = str(pipeline)
    row["threads"] = args.threads
    for g in args.guidance:
        row[f"unranked_g{g:g}"] = _eval(pipeline, g, args.threads, False, [])
        if not args.no_rerank:
            row[f"rerank8_g{g:g}"] = _eval(pipeline, g, args.threads, True, [])
    print(json.dumps(row))


if __name__ == "__main__":
    main()

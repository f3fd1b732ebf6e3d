"""FID Inception-v3 feature extraction images/s (tessera.evaluation.inception), CPU.

Random weights (throughput does not depend on them), ``--batch`` (default 32) random uint8
64x64 images per call, resized to 299x299 inside the model as FID does; ``torch.no_grad``,
``--threads`` intra-op threads (default 2), one inter-op thread. Variants: fp32 and
``torch.autocast("cpu", dtype=torch.bfloat16)``, for each ``--formats`` memory format of the
weights: ``channels_last`` (the default; oneDNN then keeps the activations NHWC, about twice
the fp32 speed of ``contiguous`` here) and/or ``contiguous``. Each variant: one warm-up call,
then ``--repeats`` (default 5) timed calls; images/s of the median call.

    python benchmarks/bench_inception.py [--batch 32] [--repeats 5] [--threads 2]
        [--formats channels_last[,contiguous]]

JSON fields (one line on stdout): bench, torch, threads, batch, image_size (input) and
input_size (299), formats; ``{fp32,bf16}_<format>_images_per_s`` per measured format;
``fp32_images_per_s`` / ``bf16_images_per_s``: the fastest format of each precision, named in
``best_format``; max_abs_diff_bf16_vs_fp32_pool (the 2048-d features of the warm-up batch, first
format) and max_rel_diff_bf16_vs_fp32_pool (divided by max |fp32 pool|);
foreign_cpu_frac: per variant, the share of the machine other processes used while it was
timed (_common.py; above ~0.05 the timing is contaminated).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

from _common import Contention, wait_quiet

SRC = Path(__file__).resolve().parents[1] / "src"
if SRC.is_dir():
    sys.path.insert(0, str(SRC))

MEMORY_FORMATS = {"contiguous": "contiguous_format", "channels_last": "channels_last"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--formats",
        default="channels_last",
        help="comma-separated weight memory formats: contiguous, channels_last",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--wait-s", type=float, default=10.0, help="max wait for a quiet machine")
    p.add_argument("--max-foreign", type=float, default=0.05)
    return p


def main() -> None:
    args = build_parser().parse_args()
    formats = args.formats.split(",")
    if not set(formats) <= set(MEMORY_FORMATS):
        raise SystemExit(f"--formats: choose from {', '.join(MEMORY_FORMATS)}")

    import torch

    from tessera.evaluation.inception import INPUT_SIZE, FIDInceptionV3

    torch.set_num_threads(args.threads)
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)
    torch.manual_seed(args.seed)
    model = FIDInceptionV3()
    for m in model.modules():  # He init keeps activations O(1) through the ReLU stack
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    g = torch.Generator().manual_seed(args.seed + 1)
    shape = (args.batch, 3, args.image_size, args.image_size)
    images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)

    result: dict = {
        "bench": "inception",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "image_size": args.image_size,
        "input_size": INPUT_SIZE,
        "formats": formats,
    }
    pools, foreign = {}, {}
    wait_quiet(args.wait_s, args.max_foreign)
    for fmt in formats:
        model.to(memory_format=getattr(torch, MEMORY_FORMATS[fmt]))
        for prec in ("fp32", "bf16"):
            name = f"{prec}_{fmt}"
            amp = torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16")
            with torch.no_grad(), amp:
                pools[name] = model(images).pool  # warm-up (oneDNN primitive caches)
                times = []
                with Contention() as c:
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        model(images)
                        times.append(time.perf_counter() - t0)
            result[f"{name}_images_per_s"] = round(args.batch / statistics.median(times), 2)
            foreign[name] = None if c.foreign is None else round(c.foreign, 3)
            print(f"{name}: {result[f'{name}_images_per_s']} images/s", file=sys.stderr)
    best = {}
    for prec in ("fp32", "bf16"):
        best[prec] = max(formats, key=lambda f: result[f"{prec}_{f}_images_per_s"])
        result[f"{prec}_images_per_s"] = result[f"{prec}_{best[prec]}_images_per_s"]
    result["best_format"] = best
    fp32 = pools[f"fp32_{formats[0]}"]
    diff = (pools[f"bf16_{formats[0]}"] - fp32).abs().max().item()
    result["max_abs_diff_bf16_vs_fp32_pool"] = diff
    result["max_rel_diff_bf16_vs_fp32_pool"] = diff / fp32.abs().max().item()
    result["foreign_cpu_frac"] = foreign
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

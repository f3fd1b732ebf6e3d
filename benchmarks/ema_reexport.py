"""Remove the random initialisation's share from a release checkpoint whose EMA ran without
warm-up; prints one JSON line.

    python benchmarks/ema_reexport.py DIR --stage prior --updates 2000 --decay 0.999 \
        [--seed 0] [--out DIR] [--float16]

An EMA with a fixed decay d started at the initial weights w0 holds, after n updates,
``ema = d**n * w0 + (1 - d**n) * avg`` where ``avg`` is the (normalised) moving average of the
trained weights. The run's w0 is rebuilt exactly as the runner built it (``torch.manual_seed
(seed)`` then the stage's ``build_model``), and the bias-corrected average
``(ema - d**n * w0) / (1 - d**n)`` is written (in place unless ``--out``). Buffers the stage
fits before training (the AR prior's PCA) are constant in the EMA and come out unchanged.
Checkpoints trained since the EMA warm-up need none of this.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if (ROOT / "src").is_dir():
    sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("--stage", required=True, help="training stage name (prior, decoder, ...)")
    ap.add_argument("--updates", type=int, required=True, help="EMA updates the run made")
    ap.add_argument("--decay", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0, help="the run's train.seed")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--float16", action="store_true", help="store the weights as float16")
    args = ap.parse_args()

    import torch

    from tessera import checkpoint
    from tessera.training.stages import get_stage

    ck = checkpoint.load_checkpoint(args.checkpoint)
    model, cfg = ck.obj, ck.obj.config
    torch.manual_seed(args.seed)
    init = get_stage(args.stage).build_model(cfg).state_dict()
    share = args.decay**args.updates
    changed, largest = 0, 0.0
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if not v.is_floating_point():
                continue
            w0 = init[k].to(v.dtype)
            fixed = (v - share * w0) / (1 - share)
            largest = max(largest, float((fixed - v).abs().max()) if v.numel() else 0.0)
            changed += int(not torch.equal(fixed, v))
            v.copy_(fixed)
    out = checkpoint.save(
        args.out or args.checkpoint,
        config=cfg,
        model=model,
        tokenizer=ck.tokenizer,
        overwrite=True,
        dtype="float16" if args.float16 else None,
    )
    record = {
        "bench": "ema_reexport",
        "checkpoint": str(out),
        "init_share_removed": round(share, 6),
        "tensors_changed": changed,
        "largest_change": round(largest, 6),
        "settings": {k: str(v) for k, v in vars(args).items()},
    }
    print(json.dumps(record))


if __name__ == "__main__":
    main()

"""Train the real decoder stage on every rank of a torchrun launch (gloo on CPU), recording
each rank's per-update draws: ``draws.rank<R>.jsonl`` in ``--out`` gets (step, the batch's
seed, its first caption ids, its noise levels) per update.

    python -m torch.distributed.run --standalone --nproc_per_node 2 \\
        tests/helpers/draws_worker.py --out DIR --run-dir RUN --steps N --clip C --tokenizer T
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch

from tessera.diffusion import schedule_for
from tessera.nn.rng import generator_for
from tessera.training.stages import get_stage, runner


def main() -> int:
    ap = argparse.ArgumentParser()
    for flag in ("--out", "--run-dir", "--clip", "--tokenizer"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--steps", type=int, required=True)
    args = ap.parse_args()
    rank = int(os.environ.get("RANK", "0"))
    log = Path(args.out) / f"draws.rank{rank}.jsonl"
    real = get_stage("decoder")

    def objective(cfg):  # the stage's objective, recording what it is handed
        inner = real.objective(cfg)
        steps = schedule_for(cfg.diffusion).num_steps

        def recording(model, batch, step):  # t: the objective's first draw, redone
            b = batch["images"].shape[0]
            t = torch.randint(0, steps, (b,), generator=generator_for("cpu", batch["seed"]))
            record = {"step": step, "seed": batch["seed"], "text": batch["text"][0].tolist()}
            with log.open("a") as f:
                f.write(json.dumps({**record, "t": t.tolist()}) + "\n")
            return inner(model, batch, step)

        return recording

    runner.get_stage = lambda name: dataclasses.replace(real, objective=objective)
    return runner.train_stage(
        "decoder",
        run_dir=args.run_dir,
        clip=args.clip,
        tokenizer=args.tokenizer,
        steps=args.steps,
        checkpoint_every=2,
        seed=5,
        progress=False,
        overrides=["train.sample_every=0", "train.lr_decay_steps=6"],
    )


if __name__ == "__main__":
    sys.exit(main())

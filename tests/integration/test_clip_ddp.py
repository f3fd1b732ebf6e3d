"""CLIP under DDP on two real processes (torchrun, gloo on CPU): the embeddings of both ranks
are gathered, so each rank's loss is the loss of the global batch (negatives from the other
rank included), and the averaged gradients and a short training run equal one process on the
concatenated batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import clip_ddp_worker as w
from tessera.training.stages.clip import contrastive_objective


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("clip_ddp")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc_per_node", str(w.WORLD), str(Path(w.__file__)), "--out", str(out)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun hung: {str(e.stderr)[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in range(w.WORLD)]


def test_each_rank_computes_the_global_batch_loss_and_gradients(ranks) -> None:
    out, info = ranks
    model = w.build_model()
    loss, _ = contrastive_objective(model, w.global_batch(0), 0)
    loss.backward()
    for r in range(w.WORLD):
        assert info[r]["loss"] == pytest.approx(loss.item(), rel=1e-6)
        # with only this rank's own negatives the loss would be another number
        assert abs(info[r]["local_loss"] - loss.item()) > 1e-3
        grads = load_file(str(out / f"rank{r}.safetensors"))
        for name, p in model.named_parameters():
            torch.testing.assert_close(grads[f"grad.{name}"], p.grad, rtol=1e-4, atol=1e-6)


def test_ddp_training_equals_one_process_on_the_concatenated_batch(ranks, tmp_path) -> None:
    out, info = ranks
    trainer, losses = w.build_trainer(tmp_path / "single", 0, 1)
    trainer.fit()
    assert len(losses) == w.STEPS
    for r in range(w.WORLD):
        assert info[r]["steps"] == pytest.approx(losses, rel=1e-5)
        weights = load_file(str(out / f"rank{r}.safetensors"))
        for k, v in trainer.model.state_dict().items():
            got = weights[f"model.{k}"]
            if k.endswith("attn.in_proj_bias"):
                # the key bias shifts every score of a query equally: its gradient is 0 up to
                # rounding, which Adam's normalisation turns into arbitrary +-lr steps
                n = v.shape[0] // 3
                got, v = torch.cat([got[:n], got[2 * n :]]), torch.cat([v[:n], v[2 * n :]])
            torch.testing.assert_close(got, v, rtol=1e-4, atol=1e-5, msg=k)

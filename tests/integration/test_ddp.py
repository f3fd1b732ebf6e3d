"""The trainer on two real processes (torchrun, gloo on CPU): plain DDP equals one process on
the same global batch, PowerSGD trains, reports its compression and resumes bit for bit,
a non-finite step or a signal on one rank is agreed on by both, only rank 0 writes
(issue 3; reliability T16, T20, T26).

Two torchrun launches serve every test (``tests/helpers/ddp_worker.py`` runs the scenarios
in sequence): phase "first", then phase "resume" continuing an interrupted PowerSGD run.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import ddp_worker as w
from tessera.training import state

WORKER = Path(w.__file__)
RANKS = (0, 1)


def _launch(out: Path, phase: str) -> dict[int, dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]  # a free port
    cmd += ["--nproc_per_node", str(w.WORLD), str(WORKER), "--out", str(out), "--phase", phase]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=150, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"torchrun phase {phase} hung: {str(e.stderr)[-3000:]}")
    if proc.returncode != 0:
        pytest.fail(f"torchrun phase {phase} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}")
    return {r: json.loads((out / f"{phase}.rank{r}.json").read_text()) for r in RANKS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    out = tmp_path_factory.mktemp("ddp")
    first = _launch(out, "first")
    cut = state.list_complete(out / "psgd_cut")  # before the resume adds to them
    first["cut_checkpoints"] = [p.name for p in cut]
    first["cut_meta"] = json.loads((cut[-1] / "trainer.json").read_text())
    resume = _launch(out, "resume")
    return out, first, resume


def _weights(out: Path, scenario: str, rank: int) -> dict[str, torch.Tensor]:
    return load_file(str(out / f"{scenario}.rank{rank}.safetensors"))


def _losses(info: dict) -> dict[int, float]:
    return {s["step"]: s["loss"] for s in info["steps"]}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_plain_ddp_matches_one_process_on_the_global_batch(runs, tmp_path):
    out, first, _ = runs
    # the single process sees exactly the union of the ranks' slices, in rank order
    union, parts = w.UnionBatches(w.BATCH, w.WORLD), w.UnionBatches(w.BATCH, w.WORLD).parts
    x, _ = next(union)
    assert torch.equal(x, torch.cat([next(p)[0] for p in parts]))

    single = w.build_exact(tmp_path / "single", single=True)
    steps: list[dict] = []
    w.record_steps(single, steps)
    single.fit()
    ref = _losses({"steps": steps})
    per_rank = [_losses(first[r]["ddp"]) for r in RANKS]
    assert sorted(ref) == sorted(per_rank[0]) == sorted(per_rank[1]) == list(range(1, 21))
    assert per_rank[0][1] != per_rank[1][1]  # the ranks do see different data
    for s in ref:  # the trainer logs the local loss: the global one is their mean
        mean = sum(p[s] for p in per_rank) / w.WORLD
        assert mean == pytest.approx(ref[s], rel=1e-5), s
    assert ref[20] < 0.3 * ref[1]

    w0, w1 = _weights(out, "ddp", 0), _weights(out, "ddp", 1)
    assert _equal(w0, w1)  # replicas identical
    mine = {f"model.{k}": v for k, v in single.model.state_dict().items()}
    mine.update({f"ema.{k}": v for k, v in single.ema.state_dict().items()})
    assert mine.keys() == w0.keys()
    for k in mine:
        torch.testing.assert_close(w0[k], mine[k], rtol=1e-5, atol=1e-6, msg=k)


def test_only_rank0_writes(runs):
    out, first, _ = runs
    run0, run1 = out / "ddp", out / "ddp_rank1"  # scenario ddp: rank 1 had its own run_dir
    assert run1.is_dir() and list(run1.iterdir()) == []
    assert [p.name for p in state.list_complete(run0)] == ["step-00000010", "step-00000020"]
    lines = (run0 / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == list(range(1, 21))
    assert json.loads((run0 / "summary.json").read_text())["step"] == 20
    # a shared run_dir: every step logged once (rank 0's local loss), one summary
    shared = out / "psgd_ref"
    recs = [json.loads(x) for x in (shared / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == list(range(1, 31))
    assert [r["loss"] for r in recs] == [s["loss"] for s in first[0]["psgd_ref"]["steps"]]
    assert {p.name for p in shared.iterdir()} <= {"checkpoints", "metrics.jsonl", "summary.json"}


def test_nonfinite_on_one_rank_is_skipped_by_both(runs):
    """T20 with 2 ranks: step 5, rank 1's loss alone is NaN (its gradients are finite, so
    rank 0 sees nothing wrong); step 8, rank 1's gradients are NaN. Both ranks skip both."""
    out, first, _ = runs
    for r in RANKS:
        info = first[r]["nan"]
        assert info["step"] == 10 and info["skipped_steps"] == 2
        skipped = [s["step"] for s in info["steps"] if s["skipped"]]
        assert skipped == [w.NAN_LOSS_STEP, w.NAN_GRAD_STEP]
        assert info["unchanged"] == {str(w.NAN_LOSS_STEP): True, str(w.NAN_GRAD_STEP): True}
    assert math.isfinite(_losses(first[0]["nan"])[w.NAN_LOSS_STEP])  # rank 0: finite loss...
    assert math.isnan(_losses(first[1]["nan"])[w.NAN_LOSS_STEP])  # ...rank 1: NaN; both skip
    assert _equal(_weights(out, "nan", 0), _weights(out, "nan", 1))


def test_powersgd_trains_and_reports_its_compression(runs):
    out, first, _ = runs
    for r in RANKS:
        info = first[r]["psgd_ref"]
        losses = _losses(info)
        assert sum(losses[s] for s in (28, 29, 30)) < 0.3 * sum(losses[s] for s in (1, 2, 3))
        # PowerSGD counts one iteration per synchronised step (plain all-reduce for 2)
        assert [s["psgd_iter"] for s in info["steps"]] == list(range(30))
        ratio = info["extra"]["powersgd_compression_ratio"]
        assert 0.0 < ratio < 1.0
        hook = info["hook_stats"]  # what torch's hook counted over the 28 compressed steps
        assert ratio == pytest.approx(1.0 - hook["after"] / hook["before"], abs=1e-12)
    assert _equal(_weights(out, "psgd_ref", 0), _weights(out, "psgd_ref", 1))  # T26
    print(
        f"\nPowerSGD rank {w.PSGD_RANK}: compression ratio {ratio:.4f} "
        f"({hook['before']} -> {hook['after']} numbers over {30 - 2} compressed steps)"
    )


def test_signal_on_one_rank_stops_both_at_the_same_step(runs):
    _, first, _ = runs
    for r in RANKS:  # SIGTERM reached rank 1 alone, during step 10
        info = first[r]["psgd_cut"]
        assert info["interrupted"] and info["step"] == w.CUT_AT
    assert first["cut_checkpoints"] == ["step-00000005", f"step-{w.CUT_AT:08d}"]


def test_powersgd_resume_is_bit_exact(runs):
    """T26: a fresh launch resumes the compressor (per-rank error feedback, P/Q memories,
    its RNG and iteration) and replays steps 11-30 exactly as the uninterrupted run."""
    out, first, resume = runs
    assert first["cut_meta"]["powersgd"]["iter"] == w.CUT_AT  # saved after 10 synced steps
    for r in RANKS:
        info = resume[r]["psgd_resumed"]
        assert info["resumed_from"] == w.CUT_AT and info["step"] == 30
        assert not any("compressor state reset" in m for m in info["warnings"]), info["warnings"]
        assert info["steps"][0]["psgd_iter"] == w.CUT_AT  # continues, not from 0
        ref, got = _losses(first[r]["psgd_ref"]), _losses(info)
        assert sorted(got) == list(range(w.CUT_AT + 1, 31))
        for s in got:
            assert got[s] == ref[s], f"rank {r} step {s}: {got[s]!r} != {ref[s]!r}"
        assert _equal(_weights(out, "psgd_resumed", r), _weights(out, "psgd_ref", r))
    assert _equal(_weights(out, "psgd_resumed", 0), _weights(out, "psgd_resumed", 1))


def test_powersgd_checkpoint_keeps_each_ranks_error_feedback(runs):
    out, _, _ = runs
    ckpt = state.list_complete(out / "psgd_ref")[-1]
    extra = load_file(str(ckpt / "extra.safetensors"))
    e0, e1 = extra["powersgd.0.err.embed.weight"], extra["powersgd.1.err.embed.weight"]
    assert e0.shape == (32 * 8,) and not torch.equal(e0, e1)  # local errors differ per rank
    assert torch.equal(extra["powersgd.0.q.embed.weight"], extra["powersgd.1.q.embed.weight"])


def test_powersgd_survives_a_nan_gradient(runs):
    """A NaN gradient goes through the compressor; without resetting its memories every
    later step would be NaN too (and the run would abort)."""
    out, first, _ = runs
    for r in RANKS:
        info = first[r]["psgd_nan"]
        assert info["step"] == 12 and info["skipped_steps"] == 1
        assert [s["step"] for s in info["steps"] if s["skipped"]] == [w.PSGD_NAN_STEP]
        assert all(math.isfinite(s["loss"]) for s in info["steps"][w.PSGD_NAN_STEP :])
    assert _equal(_weights(out, "psgd_nan", 0), _weights(out, "psgd_nan", 1))


def test_powersgd_memories_follow_a_rebucketing(runs):
    """Several buckets whose layout changes (as DDP re-buckets after the first step of every
    process, resumed ones included): same gradients and memories as without the change."""
    _, first, _ = runs
    for r in RANKS:
        assert first[r]["remap"] == {
            "memories_per_param": True,
            "rebucketed_out": True,
            "rebucketed_memories": True,
            "resumed_out": True,
            "resumed_memories": True,
        }

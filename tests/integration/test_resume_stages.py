"""Every real stage at its tiny preset survives ``kill -9``: a run killed after update 6 and
re-run with the same command logs the same loss at every step and ends with the same live,
EMA and release weights as a run that was never interrupted (reliability T1). BPE dropout is
on (the real tokenizer preset), and one stage each runs with ``train.compile`` and bf16.

Also: two fresh runs of one command are identical, and a short run's EMA holds no trace of the
random initial weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import kill_stage
from tessera.cli.main import main
from tessera.training import state

SCRIPT = Path(kill_stage.__file__)
STEPS, EVERY, KILL = 8, 4, 6


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    """A tiny tokenizer (with its 10% BPE dropout), CLIP and dVAE for the stages that need
    frozen inputs."""
    root = tmp_path_factory.mktemp("inputs")
    tok = root / "tok"
    argv = ["tokenizer", "train", "shapes", "--n", "200", "--out", str(tok), "--preset", "tiny"]
    assert main(argv) == 0
    assert json.loads((tok / "config.json").read_text())["dropout"] > 0
    quick = ["--steps", "4", "--no-progress"]
    argv = ["clip", "train", "--preset", "tiny", "--run-dir", str(root / "clip"), *quick]
    assert main([*argv, "--tokenizer", str(tok)]) == 0
    assert main(["vae", "train", "--preset", "tiny", "--run-dir", str(root / "vae"), *quick]) == 0
    return {
        "tok": str(tok),
        "clip": str(root / "clip" / "final"),
        "vae": str(root / "vae" / "final"),
    }


def _argv(case: str, inputs: dict[str, str]) -> list[str]:
    tok, clip = ["--tokenizer", inputs["tok"]], ["--clip", inputs["clip"]]
    base = {
        "vae": ["vae", "train"],
        "vqgan": ["vqgan", "train"],
        "dalle": ["dalle", "train", "--vae", inputs["vae"], *tok],
        "clip": ["clip", "train", *tok],
        "decoder": ["decoder", "train", *clip, *tok],
        "upsampler": ["upsampler", "train"],
        "prior": ["prior", "train", "--kind", "diffusion", *clip, *tok],
        "ar_prior": ["prior", "train", "--kind", "ar", *clip, *tok],
    }
    stage, _, variant = case.partition("+")
    extra = {"": [], "compile": ["train.compile=true"], "bf16": ["train.precision=bf16"]}[variant]
    return [
        *base[stage],
        *("--preset", "tiny", "--steps", str(STEPS), "--checkpoint-every", str(EVERY)),
        *("--seed", "3", "--no-progress", "train.sample_every=0", *extra),
    ]


def _run(argv: list[str], run_dir: Path, kill_after: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "TESSERA_TEST_KILL_AFTER": str(kill_after)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv, "--run-dir", str(run_dir)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines)}


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    last = state.list_complete(run_dir)[-1]
    out = {f"live.{k}": v for k, v in load_file(str(last / "model.safetensors")).items()}
    if (last / "ema.safetensors").exists():
        out |= {f"ema.{k}": v for k, v in load_file(str(last / "ema.safetensors")).items()}
    out |= {
        f"release.{k}": v
        for k, v in load_file(str(run_dir / "final" / "model.safetensors")).items()
    }
    return out


CASES = ["vae", "vqgan", "dalle", "clip", "decoder", "upsampler", "prior", "ar_prior"]


@pytest.mark.parametrize("case", [*CASES, "dalle+compile", "decoder+bf16"])
def test_kill_9_then_resume_is_bit_identical(inputs, tmp_path, case) -> None:
    argv = _argv(case, inputs)
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    done = _run(argv, straight)
    assert done.returncode == 0, done.stderr[-2000:]
    killed = _run(argv, cut, kill_after=KILL)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [p.name for p in state.list_complete(cut)][-1] == f"step-{EVERY:08d}"
    resumed = _run(argv, cut)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads((cut / "summary.json").read_text())["resumed_from"] == EVERY
    a, b = _losses(straight), _losses(cut)
    assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
    for s in a:
        assert a[s] == b[s], f"{case} step {s}: {a[s]!r} != {b[s]!r}"
    wa, wb = _weights(straight), _weights(cut)
    assert wa.keys() == wb.keys() and any(k.startswith("release.") for k in wa)
    for k in wa:
        assert torch.equal(wa[k], wb[k]), f"{case}: {k}"


@pytest.mark.parametrize("case", ["decoder", "clip"])
def test_two_fresh_runs_are_identical(inputs, tmp_path, case) -> None:
    """Same command twice, in fresh processes: every logged loss and gradient norm equal."""
    argv = _argv(case, inputs)
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        done = _run(argv, run)
        assert done.returncode == 0, done.stderr[-2000:]
    logs = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines()] for r in runs]
    for ra, rb in zip(*logs, strict=True):
        assert (ra["loss"], ra["grad_norm"]) == (rb["loss"], rb["grad_norm"]), ra["step"]


@pytest.mark.parametrize("stage", ["decoder", "prior"])
def test_non_finite_diffusion_steps_are_skipped_and_never_reach_the_ema(
    inputs, tmp_path, monkeypatch, stage
) -> None:
    """A NaN injected into the loss of updates 3, 4 and 6 (so into every gradient) is skipped
    and counted, and neither the weights nor the EMA absorb anything non-finite; NaN at every
    update stops the run with one line naming the last good checkpoint."""
    import dataclasses
    import math

    from tessera.errors import TrainingDivergedError
    from tessera.training.stages import get_stage, runner

    real = get_stage(stage)
    poisoned: set[int] = set()

    def objective(cfg):
        inner = real.objective(cfg)

        def poisoned_objective(model, batch, step):
            loss, metrics = inner(model, batch, step)
            if step in poisoned:
                loss = loss * float("nan")
            return loss, metrics

        return poisoned_objective

    monkeypatch.setattr(
        runner, "get_stage", lambda name: dataclasses.replace(real, objective=objective)
    )
    argv = {"clip": inputs["clip"], "tokenizer": inputs["tok"], "preset": "tiny"}
    kw = {"steps": 8, "checkpoint_every": 4, "progress": False}
    overrides = ["train.sample_every=0", "train.max_consecutive_skips=3"]
    poisoned.update({2, 3, 5})
    assert (
        runner.train_stage(stage, run_dir=tmp_path / "run", overrides=overrides, **argv, **kw) == 0
    )
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["skipped_steps"] == 3 and summary["step"] == 8
    logged = _losses(tmp_path / "run")
    assert [s for s, v in logged.items() if not math.isfinite(v)] == [3, 4, 6]
    last = state.list_complete(tmp_path / "run")[-1]
    for name in ("ema.safetensors", "model.safetensors"):
        assert all(torch.isfinite(v).all() for v in load_file(str(last / name)).values())

    poisoned.update(range(100))
    with pytest.raises(TrainingDivergedError, match="3 consecutive steps had non-finite"):
        runner.train_stage(stage, run_dir=tmp_path / "bad", overrides=overrides, **argv, **kw)


def _torchrun(out: Path, run_dir: Path, steps: int, inputs: dict[str, str]) -> None:
    from helpers import draws_worker

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    cmd += [draws_worker.__file__, "--out", str(out), "--run-dir", str(run_dir)]
    cmd += ["--steps", str(steps), "--clip", inputs["clip"], "--tokenizer", inputs["tok"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_two_ranks_draw_differently_and_resume_their_own_draws(inputs, tmp_path) -> None:
    """Decoder on 2 gloo ranks: the ranks' batch seeds, noise levels and captions differ at
    every update; a run stopped at update 2 and re-run to 4 draws what a straight run drew."""
    straight, cut = tmp_path / "straight", tmp_path / "cut"
    straight.mkdir()
    cut.mkdir()
    _torchrun(straight, straight / "run", 4, inputs)
    _torchrun(cut, cut / "run", 2, inputs)
    _torchrun(cut, cut / "run", 4, inputs)

    def draws(root: Path, rank: int) -> dict[int, dict]:
        lines = (root / f"draws.rank{rank}.jsonl").read_text().splitlines()
        return {r["step"]: r for r in map(json.loads, lines)}

    a0, a1 = draws(straight, 0), draws(straight, 1)
    assert sorted(a0) == sorted(a1) == [0, 1, 2, 3]
    for s in a0:
        assert a0[s]["seed"] != a1[s]["seed"] and a0[s]["t"] != a1[s]["t"], s
    for rank in (0, 1):
        assert draws(cut, rank) == draws(straight, rank)
    assert _losses(straight / "run") == _losses(cut / "run")


def test_init_from_starts_from_a_release_checkpoint(inputs, tmp_path) -> None:
    """train.init_from: a run starts from another run's release weights (fine-tuning); a
    checkpoint of another config is a one-line error."""
    from tessera.errors import ConfigError
    from tessera.training.stages import runner

    common = {"clip": inputs["clip"], "tokenizer": inputs["tok"], "progress": False}
    assert runner.train_stage("decoder", run_dir=tmp_path / "a", steps=3, **common) == 0
    final = tmp_path / "a" / "final"
    tuned = ["train.sample_every=0", f"train.init_from={final}", "train.lr=1e-12"]
    assert (
        runner.train_stage("decoder", run_dir=tmp_path / "b", steps=1, overrides=tuned, **common)
        == 0
    )
    wa = load_file(str(final / "model.safetensors"))
    wb = load_file(str(state.list_complete(tmp_path / "b")[-1] / "model.safetensors"))
    assert all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)
    with pytest.raises(ConfigError, match="its model config differs"):
        bad = [*tuned, "model.clip_dropout=0.5"]
        runner.train_stage("decoder", run_dir=tmp_path / "c", steps=1, overrides=bad, **common)

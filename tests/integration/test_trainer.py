"""The generic trainer: falling loss, exact resume after SIGKILL, faults (T1-T9, T20)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import toy_training as toy
from tessera.errors import CheckpointError, TrainingDivergedError, TrainingError
from tessera.training import state

SCRIPT = Path(toy.__file__)


def _losses(run_dir: Path) -> dict[int, float]:
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]
    return out


def _run(run_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--run-dir", str(run_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    last = state.list_complete(run_dir)[-1]
    return {
        **load_file(str(last / "model.safetensors")),
        **{f"ema.{k}": v for k, v in load_file(str(last / "ema.safetensors")).items()},
    }


def test_loss_falls_and_logs(tmp_path):
    trainer = toy.build_trainer(tmp_path / "run", steps=30)
    result = trainer.fit()
    losses = _losses(tmp_path / "run")
    assert sorted(losses) == list(range(1, 31))
    first, last = sum(losses[s] for s in (1, 2, 3)), sum(losses[s] for s in (28, 29, 30))
    assert last < 0.3 * first
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["step"] == 30 and summary["skipped_steps"] == 0 and summary["peak_rss_mb"] > 0
    assert result.examples_per_s > 0
    rec = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert {"step", "loss", "lr", "grad_norm", "examples_per_s"} <= set(rec)
    # keep_last=2: only the two newest complete checkpoints remain (T7)
    names = [p.name for p in state.list_complete(tmp_path / "run")]
    assert names == ["step-00000025", "step-00000030"]


def test_sigkill_then_resume_is_bit_identical(tmp_path):
    """T1: killed with SIGKILL after step 23, resumed from step 20: same losses, same weights."""
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert _run(ref).returncode == 0
    killed = _run(cut, "--kill-after", "23")
    assert killed.returncode == -signal.SIGKILL
    assert [p.name for p in state.list_complete(cut)][-1] == "step-00000020"
    resumed = _run(cut)
    assert resumed.returncode == 0, resumed.stderr
    a, b = _losses(ref), _losses(cut)
    assert sorted(b) == list(range(1, 31))  # replayed steps 21-23 are logged once
    for s in range(1, 31):
        assert a[s] == b[s], f"step {s}: {a[s]!r} != {b[s]!r}"
    wa, wb = _final_weights(ref), _final_weights(cut)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_resume_restores_everything(tmp_path):
    """T6: step, LR, EMA, optimizer moments, RNG and data position equal their saved values."""
    run = tmp_path / "run"
    t1 = toy.build_trainer(run, steps=10)
    t1.fit()
    ema_before = {k: v.clone() for k, v in t1.ema.state_dict().items()}
    data_before = t1.batches.state_dict()
    opt_before = t1.optimizer.state_dict()
    rng_before = torch.get_rng_state()
    t2 = toy.build_trainer(run, steps=10)
    t2._restore()
    assert t2.step == 10 and t2.batches.state_dict() == data_before
    assert all(torch.equal(ema_before[k], v) for k, v in t2.ema.state_dict().items())
    opt_after = t2.optimizer.state_dict()
    for i, st in opt_before["state"].items():
        for k, v in st.items():
            assert torch.equal(v, opt_after["state"][i][k])
    assert torch.equal(torch.get_rng_state(), rng_before)
    meta = json.loads((state.list_complete(run)[-1] / "trainer.json").read_text())
    from tessera.training.trainer import learning_rate

    assert meta["lr"] == learning_rate(toy.train_config(steps=10), 9)  # the last update's lr


def test_crash_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    """T2: a write that dies half-way leaves the previous checkpoint complete and loadable;
    a partial directory (what SIGKILL mid-write leaves) is ignored, then removed."""
    import safetensors.torch as st

    run = tmp_path / "run"
    toy.build_trainer(run, steps=10).fit()
    real, calls = st.save_file, {"n": 0}

    def flaky(*a, **kw):  # model.safetensors is written, then the disk "dies"
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("simulated crash")
        return real(*a, **kw)

    monkeypatch.setattr(st, "save_file", flaky)
    with pytest.raises(OSError, match="simulated crash"):
        toy.build_trainer(run, steps=15).fit()
    monkeypatch.undo()
    assert [p.name for p in state.list_complete(run)] == ["step-00000005", "step-00000010"]
    partial = state.checkpoint_dir(run) / ".step-00000015.tmp-x"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"partial")
    t = toy.build_trainer(run, steps=15)
    t._restore()
    assert t.step == 10
    assert not partial.exists()


def test_corrupt_checkpoint_fallback_and_explicit_error(tmp_path):
    """T3: auto falls back to the previous complete checkpoint; an explicit path errors."""
    run = tmp_path / "run"
    toy.build_trainer(run, steps=10).fit()
    newest = state.list_complete(run)[-1]
    f = newest / "optimizer.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    t = toy.build_trainer(run, steps=10)
    t._restore()
    assert t.step == 5
    with pytest.raises(CheckpointError, match="optimizer.safetensors"):
        toy.build_trainer(run, resume=str(newest), steps=10)._restore()


def test_incompatible_model_config_is_a_readable_diff(tmp_path):
    """T5."""
    run = tmp_path / "run"
    toy.build_trainer(run, steps=5).fit()
    t = toy.build_trainer(run, steps=10)
    t.model_config = toy.ToyConfig(hidden=64)
    with pytest.raises(CheckpointError, match="hidden: checkpoint 32 vs now 64"):
        t._restore()


def test_resume_none_starts_over(tmp_path):
    run = tmp_path / "run"
    toy.build_trainer(run, steps=5).fit()
    t = toy.build_trainer(run, resume="none", steps=5)
    t._restore()
    assert t.step == 0 and state.list_complete(run) == []


def test_no_pickle_anywhere(tmp_path):
    """T9: every resume artefact is safetensors or JSON."""
    run = tmp_path / "run"
    toy.build_trainer(run, steps=5).fit()
    files = {p.name for p in state.list_complete(run)[-1].iterdir()}
    assert files == {
        "COMPLETE",
        "trainer.json",
        "model.safetensors",
        "ema.safetensors",
        "optimizer.safetensors",
        "extra.safetensors",
    }


def test_nan_steps_are_skipped_then_abort(tmp_path):
    """T20: a NaN step leaves optimizer and EMA untouched and is counted; N in a row stop the
    run with the last good checkpoint intact."""
    run = tmp_path / "run"
    t = toy.build_trainer(run, steps=20, max_consecutive_skips=3)
    inner = t.objective
    bad = {7}

    def objective(model, batch, step):
        loss, m = inner(model, batch, step)
        return (loss * float("nan") if step in bad else loss), m

    t.objective = objective
    snapshot: dict = {}

    def spy(model, batch, step):
        if step == 7:
            snapshot["w"] = {k: v.clone() for k, v in model.state_dict().items()}
            snapshot["ema"] = {k: v.clone() for k, v in t.ema.state_dict().items()}
        if step == 8:
            snapshot["w8"] = {k: v.clone() for k, v in model.state_dict().items()}
            snapshot["ema8"] = {k: v.clone() for k, v in t.ema.state_dict().items()}
        return objective(model, batch, step)

    t.objective = spy
    result = t.fit()
    assert result.skipped_steps == 1 and result.step == 20
    assert all(torch.equal(snapshot["w"][k], snapshot["w8"][k]) for k in snapshot["w"])
    assert all(torch.equal(snapshot["ema"][k], snapshot["ema8"][k]) for k in snapshot["ema"])
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r["skipped"]] == [8]

    run2 = tmp_path / "run2"
    t = toy.build_trainer(run2, steps=20, max_consecutive_skips=3)
    inner2 = t.objective
    t.objective = lambda m, b, s: (lambda loss, mm: (loss * float("nan") if s >= 12 else loss, mm))(
        *inner2(m, b, s)
    )
    with pytest.raises(TrainingDivergedError, match="3 consecutive steps.*step-00000010"):
        t.fit()
    assert state.list_complete(run2)[-1].name == "step-00000010"


def test_unwritable_run_dir_and_full_disk(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(TrainingError, match="not writable"):
        toy.build_trainer(blocker / "run", steps=2).fit()
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10, 10, 0))
    with pytest.raises(TrainingError, match="not enough disk space"):
        toy.build_trainer(tmp_path / "run", steps=2).fit()


def test_sigterm_checkpoints_and_stops(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--run-dir", str(run), "--steps", "100000"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline and not state.list_complete(run):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "interrupted=True" in out
    step = int(out.split("step=")[1].split()[0])
    assert state.list_complete(run)[-1].name == f"step-{step:08d}"


def test_a_config_field_added_since_the_checkpoint_resumes_at_its_default(tmp_path):
    """A checkpoint written before a model-config field existed (its saved dict lacks the key)
    resumes when the field is at its default; another value is still a readable diff."""
    from tessera.config.presets import preset
    from tessera.training.trainer import Trainer

    cfg = preset("decoder", "tiny")
    saved = cfg.to_dict()
    del saved["text_encoder"]  # an option added later, as an older checkpoint lacks it
    del saved["unet"]["scale_shift_norm"]
    t = Trainer.__new__(Trainer)
    t.model_config = cfg
    t._check_model_config(tmp_path, saved)  # at their defaults: no error
    saved_other = {**cfg.to_dict(), "clip_dropout": cfg.clip_dropout + 0.1}
    with pytest.raises(CheckpointError, match="clip_dropout: checkpoint"):
        t._check_model_config(tmp_path, saved_other)

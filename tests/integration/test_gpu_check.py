"""The prepared GPU script (benchmarks/gpu_check.py) runs its CPU dry run: it must not rot
between the sessions that get a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_dry_run_on_cpu(tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--device",
            "cpu",
            "--quick",
            "--parts",
            "train,flex,convert",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "OUT": str(tmp_path)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["train"]["ok"] and len(out["train"]["losses"]) == 4
    assert out["flex"]["ok"] and out["flex"]["within_tolerance"]
    assert out["convert"]["ok"], out["convert"]
    assert out["convert"]["karlo"]["images"][0] == out["convert"]["rudalle"]["images"][0] == 2
    assert json.loads((tmp_path / "gpu_check.json").read_text()) == out


def test_gpu_check_says_when_there_is_no_gpu() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == (
        "no CUDA device here: run on the GPU machine, or --device cpu --quick"
    )

"""``tessera vae train | encode | reconstruct`` end to end on the tiny preset (in-process)."""

import json

import numpy as np
import pytest
from PIL import Image

from tessera.cli.main import main


def _train(run_dir, steps: int) -> int:
    return main(
        [
            "vae",
            "train",
            "--preset",
            "tiny",
            "--run-dir",
            str(run_dir),
            "--steps",
            str(steps),
            "--checkpoint-every",
            "3",
            "--no-progress",
        ]
    )


def _steps(run_dir) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train 6 steps, snapshot the run directory, then re-run the command with --steps 8."""
    run_dir = tmp_path_factory.mktemp("vae") / "run"
    first = {"code": _train(run_dir, 6)}
    first["steps"] = _steps(run_dir)
    first["metrics"] = (run_dir / "metrics.jsonl").read_text().splitlines()
    first["final"] = sorted(p.name for p in (run_dir / "final").iterdir())
    first["config"] = json.loads((run_dir / "final" / "config.json").read_text())
    first["weights"] = (run_dir / "final" / "model.safetensors").read_bytes()
    first["checkpoints"] = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    second = {"code": _train(run_dir, 8)}
    second["steps"] = _steps(run_dir)
    second["metrics"] = (run_dir / "metrics.jsonl").read_text().splitlines()
    second["summary"] = json.loads((run_dir / "summary.json").read_text())
    second["weights"] = (run_dir / "final" / "model.safetensors").read_bytes()
    return run_dir, first, second


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i, size in enumerate([(32, 32), (48, 40), (64, 64)]):
        arr = np.zeros((*size, 3), np.uint8)
        arr[:] = rng.integers(0, 255, 3, dtype=np.uint8)  # a flat colour
        arr[size[0] // 4 : size[0] // 2, size[1] // 4 : size[1] // 2] = 255 - arr[0, 0]
        Image.fromarray(arr).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_train_writes_a_release_checkpoint(run):
    _, first, _ = run
    assert first["code"] == 0
    assert first["steps"] == list(range(1, 7))
    assert {"config.json", "model.safetensors"} <= set(first["final"])
    assert first["config"]["kind"] == "vae" and first["config"]["image_size"] == 32
    assert first["checkpoints"] == ["step-00000003", "step-00000006"]


def test_rerun_resumes_from_the_last_checkpoint(run):
    _, first, second = run
    assert second["code"] == 0
    assert second["steps"] == list(range(1, 9))  # 1..8, no step repeated or lost
    assert second["metrics"][:6] == first["metrics"]  # steps 1..6 were not re-run
    assert second["summary"]["resumed_from"] == 6 and second["summary"]["steps_run"] == 2
    assert second["weights"] != first["weights"]  # the export was redone after 2 more steps


def test_encode_writes_token_grids(run, images, tmp_path, capsys):
    run_dir, _, _ = run
    out = tmp_path / "tokens"
    assert main(["vae", "encode", str(run_dir / "final"), str(images), "--out", str(out)]) == 0
    tokens = np.load(out / "tokens.npy")
    assert tokens.shape == (3, 8, 8)  # tiny preset: 32 px, 3 groups -> 8x8 tokens
    assert tokens.dtype.kind == "i" and tokens.min() >= 0 and tokens.max() < 64
    files = (out / "files.txt").read_text().splitlines()
    assert [f.rsplit("/", 1)[-1] for f in files] == ["img0.png", "img1.png", "img2.png"]
    assert "encoded 3 images" in capsys.readouterr().out
    # Batching does not change the result.
    args = ["vae", "encode", str(run_dir / "final"), str(images), "--batch-size", "1"]
    assert main([*args, "--out", str(tmp_path / "b1")]) == 0
    assert np.array_equal(np.load(tmp_path / "b1" / "tokens.npy"), tokens)


def test_reconstruct_writes_grid_and_psnr(run, images, tmp_path):
    run_dir, _, _ = run
    out = tmp_path / "rec"
    assert main(["vae", "reconstruct", str(run_dir / "final"), str(images), "--out", str(out)]) == 0
    grid = Image.open(out / "reconstructions.png")
    assert grid.mode == "RGB" and grid.size[0] > 2 * 32 and grid.size[1] >= 32
    report = json.loads((out / "psnr.json").read_text())
    assert len(report["psnr_db"]) == 3
    values = list(report["psnr_db"].values())
    assert all(np.isfinite(v) and 0 < v < 100 for v in values)
    assert report["mean_psnr_db"] == pytest.approx(sum(values) / 3)


@pytest.mark.parametrize("command", ["encode", "reconstruct"])
def test_wrong_model_path_is_a_one_line_error(run, images, tmp_path, capsys, command):
    run_dir, _, _ = run
    for model in (tmp_path / "no-such-model", run_dir):  # missing; a run dir, not a checkpoint
        code = main(["vae", command, str(model), str(images), "--out", str(tmp_path / "o")])
        err = capsys.readouterr().err.strip()
        assert code != 0
        assert err.startswith("tessera: error:") and "\n" not in err, err
        assert str(model) in err
    assert not (tmp_path / "o").exists()

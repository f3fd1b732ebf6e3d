"""``tessera dalle train`` + ``tessera generate`` end to end on tiny presets (in-process)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from tessera.cli.main import main


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    root = tmp_path_factory.mktemp("dalle")
    tok, vae_run, run = root / "tok", root / "vae", root / "run"
    assert (
        main(["tokenizer", "train", "shapes", "--n", "200", "--out", str(tok), "--preset", "tiny"])
        == 0
    )
    assert (
        main(
            [
                "vae",
                "train",
                "--preset",
                "tiny",
                "--run-dir",
                str(vae_run),
                "--steps",
                "4",
                "--no-progress",
            ]
        )
        == 0
    )
    vae = str(vae_run / "final")
    argv = ["dalle", "train", "--preset", "tiny", "--run-dir", str(run), "--vae", vae,
            "--tokenizer", str(tok), "--no-progress"]  # fmt: skip
    assert main([*argv, "--steps", "12", "--checkpoint-every", "6"]) == 0
    return root, run, argv


def test_train_exports_a_generation_ready_pipeline(pipeline) -> None:
    _, run, _ = pipeline
    final = run / "final"
    assert {"config.json", "model.safetensors", "tokenizer.json", "vae"} <= {
        p.name for p in final.iterdir()
    }
    assert json.loads((final / "config.json").read_text())["kind"] == "dalle"
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 12 and losses[-1] < losses[0]


def test_rerun_resumes(pipeline) -> None:
    _, run, argv = pipeline
    assert main([*argv, "--steps", "14"]) == 0
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-2:] == [13, 14] and len(steps) == 14


def test_generate_writes_pngs_grid_and_manifest(pipeline, tmp_path) -> None:
    _, run, _ = pipeline
    out = tmp_path / "gen"
    model = str(run / "final")
    argv = ["generate", "a red circle", "two blue squares", "--model", model, "--n", "3",
            "--seed", "7", "--top-k", "8", "--guidance", "2", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    lines = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and {x["prompt"] for x in lines} == {"a red circle", "two blue squares"}
    assert all(x["seed"] == 7 and x["top_k"] == 8 and x["guidance"] == 2.0 for x in lines)
    for x in lines:
        assert Image.open(out / x["file"]).size == (32, 32)
    assert Image.open(out / "grid.png").size[1] > 2 * 32
    # Same seed, same images.
    again = tmp_path / "again"
    assert main([*argv[:-1], str(again)]) == 0
    assert (out / "0001-002.png").read_bytes() == (again / "0001-002.png").read_bytes()


def test_image_prompt_keeps_the_top_rows(pipeline, tmp_path) -> None:
    _, run, _ = pipeline
    img = np.full((32, 32, 3), 255, np.uint8)
    img[:8] = (200, 30, 30)
    Image.fromarray(img).save(tmp_path / "p.png")
    out = tmp_path / "gen"
    model = str(run / "final")
    argv = ["generate", "a red circle", "--model", model, "--n", "2", "--out", str(out),
            "--image-prompt", str(tmp_path / "p.png"), "--keep-rows", "2"]  # fmt: skip
    assert main(argv) == 0
    from tessera.pipelines import load_pipeline

    pipe = load_pipeline(run / "final")
    import torch

    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    kept = pipe.vae.encode(x)[0, :2]
    s = pipe.generate(["a red circle"], n=2, image_prompt=x, keep_rows=2)
    assert all(torch.equal(t[:2], kept) for t in s.tokens)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--keep-rows", "0", "--image-prompt", "x.png"], "--image-prompt needs --keep-rows"),
        (["--top-p", "0"], "top_p must be > 0, got 0.0"),
    ],
)
def test_bad_generate_arguments_are_one_line_errors(
    pipeline, tmp_path, capsys, extra, message
) -> None:
    _, run, _ = pipeline
    code = main(
        ["generate", "a red circle", "--model", str(run / "final"), "--out", str(tmp_path), *extra]
    )
    err = capsys.readouterr().err
    assert code != 0 and message in err and "Traceback" not in err


def test_missing_model_and_missing_vae_flag(pipeline, tmp_path, capsys) -> None:
    root, _, _ = pipeline
    assert main(["generate", "x", "--model", str(tmp_path / "nope")]) != 0
    assert "checkpoint not found" in capsys.readouterr().err
    code = main(
        ["dalle", "train", "--run-dir", str(tmp_path / "r"), "--tokenizer", str(root / "tok")]
    )
    assert code != 0 and "needs --vae" in capsys.readouterr().err


def test_info_prints_parameter_count(capsys) -> None:
    assert main(["dalle", "info", "--preset", "dalle-12b"]) == 0
    out = capsys.readouterr().out
    n = int(next(line for line in out.splitlines() if line.startswith("parameters: ")).split()[1])
    assert abs(n / 12e9 - 1) < 0.02


def test_shapes_fidelity_reports_seen_and_held_out(pipeline) -> None:
    from tessera.evaluation.fidelity import fidelity_prompts, generate_and_score
    from tessera.pipelines import load_pipeline

    _, run, _ = pipeline
    prompts = fidelity_prompts(12)
    report, _ = generate_and_score(load_pipeline(run / "final"), prompts, samples_per_prompt=2)
    assert report["n"] == 24 == report["n_seen"] + report["n_held_out"]
    assert 0.0 <= report["strict"] <= 1.0
    assert report["n_held_out"] > 0  # about a quarter of eval prompts name a held-out pair


def test_too_long_prompt_is_cut_with_a_warning(pipeline, caplog) -> None:
    from tessera.pipelines import load_pipeline

    _, run, _ = pipeline
    pipe = load_pipeline(run / "final")
    long = " ".join(["a red circle above a blue square"] * 3)
    with caplog.at_level("WARNING", logger="tessera.text"):
        s = pipe.generate([long, "a red circle"], n=1)
    assert s.images.shape[0] == 2
    assert "1 prompt(s) longer than the model's 7 text tokens were cut" in caplog.text


@pytest.mark.slow
def test_generate_compiled_bf16_and_flag_errors(pipeline, tmp_path) -> None:
    """--compile draws the eager tokens (fp32, same seed); --precision bf16 runs; unCLIP-only
    and DALL·E-only flags are one-line errors on the other kind."""
    _, run, _ = pipeline
    model = str(run / "final")
    base = ["generate", "a red circle", "--model", model, "--n", "2", "--seed", "3",
            "--top-k", "8"]  # fmt: skip
    eager, fast, half = tmp_path / "eager", tmp_path / "fast", tmp_path / "half"
    assert main([*base, "--out", str(eager)]) == 0
    assert main([*base, "--compile", "--out", str(fast)]) == 0
    assert (eager / "0000-001.png").read_bytes() == (fast / "0000-001.png").read_bytes()
    assert main([*base, "--compile", "--precision", "bf16", "--out", str(half)]) == 0
    line = json.loads((half / "manifest.jsonl").read_text().splitlines()[0])
    assert line["compile"] is True
    assert main([*base, "--decoder-steps", "3", "--out", str(half)]) == 2


@pytest.mark.slow
def test_train_compile_trains_and_exports_plain_weights(pipeline, tmp_path) -> None:
    """train.compile=true: the compiled forward trains, and the checkpoint and the export
    hold the plain model's keys (no ``_orig_mod.``), so generation loads them."""
    root, _, argv = pipeline
    run = tmp_path / "run"
    args = [a if a != str(root / "run") else str(run) for a in argv]
    assert main([*args, "--steps", "3", "train.compile=true"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all(math.isfinite(json.loads(x)["loss"]) for x in lines)
    out = tmp_path / "gen"
    assert main(["generate", "a red circle", "--model", str(run / "final"), "--n", "1",
                 "--out", str(out)]) == 0  # fmt: skip


def test_train_compile_failure_is_one_line(pipeline, tmp_path, monkeypatch, capsys) -> None:
    """A compiler that cannot build the graph (no C++ compiler, ...) ends the run with one
    line naming the way out, not a traceback."""
    import torch

    root, _, argv = pipeline

    def fake_compile(self, **kw):  # the first call fails as inductor would
        def broken(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\ntrace")

        self.forward = broken

    monkeypatch.setattr(torch.nn.Module, "compile", fake_compile)
    args = [a if a != str(root / "run") else str(tmp_path / "run") for a in argv]
    assert main([*args, "--steps", "2", "train.compile=true"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith(
        "train.compile: compiling the model failed (RuntimeError: InvalidCxxCompiler: No "
        "working C++ compiler found); train without it (train.compile=false)"
    )

"""``tessera train --preset tiny`` and ``tessera eval ...`` end to end on small fixtures.

The FID Inception network runs with random weights (the real file is not shipped and never
downloaded); CLIP feature space uses the tiny CLIP the pipeline fixture trains.
"""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datafixtures import build_coco, build_cub
from helpers.eval_fixtures import random_inception_state_dict
from tessera.cli.main import main
from tessera.config.shapes import ShapesConfig
from tessera.data.shapes import ShapesSource


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """The whole tiny pipeline, trained once by the one-command orchestrator."""
    d = tmp_path_factory.mktemp("pipeline") / "run"
    assert main(["train", "--preset", "tiny", "--run-dir", str(d), "--no-progress"]) == 0
    return d


@pytest.fixture(scope="module")
def inception(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("inc") / "random_inception.pth"
    torch.save(random_inception_state_dict(0), path)
    return path


def _shapes_folder(root: Path, n: int, *, start: int = 0, blur: bool = False) -> Path:
    from PIL import ImageFilter

    root.mkdir(parents=True, exist_ok=True)
    src = ShapesSource(ShapesConfig(), split="eval", n=n, start=start)
    for i in range(n):
        img = Image.fromarray(src.image(i))
        if blur:
            img = img.filter(ImageFilter.GaussianBlur(3))
        img.save(root / f"{i:03d}.png")
    return root


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)


def _report_tags(out: Path) -> list[str]:
    p = _Tags()
    p.feed((out / "report.html").read_text(encoding="utf-8"))
    return p.tags


def test_orchestrator_ran_every_stage_and_resumes(run, capsys) -> None:
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["stages"]) == {"tokenizer", "vae", "dalle", "clip"}
    assert all(s["wall_s"] >= 0 for s in summary["stages"].values())
    for stage in ("vae", "dalle", "clip"):
        assert (run / stage / "final" / "config.json").is_file()
    assert main(["train", "--preset", "tiny", "--run-dir", str(run), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("done already") == 4


def test_orchestrator_rejects_bad_arguments(tmp_path, capsys) -> None:
    assert main(["train", "--preset", "nope", "--run-dir", str(tmp_path)]) == 2
    assert main(["train", "--stages", "vae,bogus", "--run-dir", str(tmp_path)]) == 2
    assert "--stages takes a subset" in capsys.readouterr().err


def test_fidelity_cli_writes_metrics_and_report(run, tmp_path) -> None:
    gen = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "a red circle",
                "a blue square above a green circle",
                "--model",
                str(run / "dalle" / "final"),
                "--n",
                "2",
                "--out",
                str(gen),
            ]
        )
        == 0
    )
    out = tmp_path / "eval"
    assert main(["eval", "fidelity", str(gen / "manifest.jsonl"), "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 4 and 0.0 <= m["strict"] <= 1.0
    for key in ("count", "color_shape", "size", "position", "relation"):
        assert key in m
    assert _report_tags(out).count("svg") == 2


def test_fid_in_clip_space_is_zero_for_a_set_and_grows_with_blur(run, tmp_path) -> None:
    real = _shapes_folder(tmp_path / "real", 12)
    blurred = _shapes_folder(tmp_path / "blurred", 12, blur=True)
    clip = f"clip:{run / 'clip' / 'final'}"
    common = ["--features", clip, "--no-progress", "--batch-size", "5"]
    assert (
        main(
            [
                "eval",
                "fid",
                str(real),
                str(real),
                *common,
                "--out",
                str(tmp_path / "a"),
                "--save-stats",
                str(tmp_path / "real.npz"),
            ]
        )
        == 0
    )
    same = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert abs(same["fid"]) < 1e-6 and same["n_real"] == 12
    assert (
        main(
            [
                "eval",
                "fid",
                str(tmp_path / "real.npz"),
                str(blurred),
                *common,
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )
    diff = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert diff["fid"] > 1e-3 and diff["real_stats_sha256"] == same["real_stats_sha256"]


def test_fid_and_is_with_inception_weights(inception, tmp_path) -> None:
    a = _shapes_folder(tmp_path / "a", 4)
    b = _shapes_folder(tmp_path / "b", 4, start=4)
    out = tmp_path / "fid"
    assert (
        main(
            [
                "eval",
                "fid",
                str(a),
                str(b),
                "--inception",
                str(inception),
                "--blur",
                "0,2",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["fid_by_blur_radius"]) == {"0", "2"} and m["fid"] > 0
    assert m["extractor"]["resize"].startswith("tf1-bilinear")
    assert "svg" in _report_tags(out)  # FID vs blur radius
    out = tmp_path / "is"
    assert (
        main(
            [
                "eval",
                "is",
                str(a),
                "--inception",
                str(inception),
                "--splits",
                "2",
                "--no-progress",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 4 and m["inception_score"] >= 1.0


def test_missing_inception_weights_say_how_to_supply_them(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.delenv("TESSERA_INCEPTION_WEIGHTS", raising=False)
    a = _shapes_folder(tmp_path / "a", 2)
    assert main(["eval", "fid", str(a), str(a), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "TESSERA_INCEPTION_WEIGHTS" in err and "clip:DIR" in err
    assert len(err.strip().splitlines()) == 1


def test_clip_score(run, tmp_path) -> None:
    gen = tmp_path / "gen"
    assert (
        main(
            [
                "generate",
                "a red circle",
                "--model",
                str(run / "dalle" / "final"),
                "--n",
                "3",
                "--out",
                str(gen),
            ]
        )
        == 0
    )
    out = tmp_path / "cs"
    assert (
        main(
            [
                "eval",
                "clip-score",
                str(gen / "manifest.jsonl"),
                "--clip",
                str(run / "clip" / "final"),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert m["n"] == 3 and 0 <= m["clip_score"] <= 100


@pytest.mark.parametrize("protocol", ["coco", "cub"])
def test_protocols_run_end_to_end_on_fixtures(protocol, run, tmp_path) -> None:
    data = build_coco(tmp_path / "coco", n=4) if protocol == "coco" else build_cub(tmp_path / "cub")
    out = tmp_path / "out"
    clip = f"clip:{run / 'clip' / 'final'}"  # a small feature space (Inception: test above)
    argv = [
        "eval",
        protocol,
        "--data",
        str(data),
        "--model",
        str(run / "dalle" / "final"),
        "--n",
        "30",
        "--image-size",
        "64",
        "--blur",
        "0,1",
        "--features",
        clip,
        "--clip",
        str(run / "clip" / "final"),
        "--candidates",
        "2",
        "--no-progress",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    expected = 3  # COCO: 4 on disk, one without captions; CUB: the 3 images of the test class
    assert m["n_real"] == m["n_generated"] == expected
    assert set(m["fid_by_blur_radius"]) == {"0", "1"}
    lines = (out / "samples" / "manifest.jsonl").read_text().splitlines()
    assert len(lines) == expected and all("score" in json.loads(x) for x in lines)
    first = Image.open(out / "samples" / json.loads(lines[0])["file"])
    assert first.size == (64, 64)
    tags = _report_tags(out)
    assert tags.count("svg") == 1 and tags.count("img") == 2
    # re-scoring the written samples without the model gives the same FID
    out2 = tmp_path / "rescore"
    assert (
        main(
            [
                "eval",
                protocol,
                "--data",
                str(data),
                "--samples",
                str(out / "samples" / "manifest.jsonl"),
                "--n",
                "30",
                "--image-size",
                "64",
                "--blur",
                "0,1",
                "--features",
                clip,
                "--no-progress",
                "--out",
                str(out2),
            ]
        )
        == 0
    )
    m2 = json.loads((out2 / "metrics.json").read_text())
    assert np.isclose(m2["fid"], m["fid"], rtol=1e-9)


def test_protocol_argument_errors(run, tmp_path, capsys) -> None:
    data = build_coco(tmp_path / "coco", n=2)
    assert (
        main(
            [
                "eval",
                "coco",
                "--data",
                str(data),
                "--features",
                f"clip:{run / 'clip' / 'final'}",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "exactly one of --model" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "coco",
                "--data",
                str(data),
                "--model",
                str(run / "dalle" / "final"),
                "--candidates",
                "4",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "needs --clip" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "cub",
                "--data",
                str(tmp_path / "nowhere"),
                "--model",
                str(run / "dalle" / "final"),
                "--features",
                f"clip:{run / 'clip' / 'final'}",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err


def test_install_ships_half_precision_weights_and_the_demo_runs(run, tmp_path) -> None:
    from safetensors import safe_open

    dest = tmp_path / "assets"
    argv = ["train", "--preset", "tiny", "--run-dir", str(run), "--install", str(dest)]
    assert main([*argv, "--no-progress"]) == 0
    for name in ("pipeline/transformer", "pipeline/clip", "pipeline/vae"):
        with safe_open(str(dest / name / "model.safetensors"), framework="pt") as f:
            dtypes = {f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118
        assert dtypes == {torch.float16}
    assert (dest / "summary.json").is_file()
    out = tmp_path / "demo"
    assert (
        main(
            [
                "demo",
                "--model",
                str(dest / "pipeline"),
                "--clip",
                str(dest / "pipeline" / "clip"),
                "--candidates",
                "2",
                "--keep",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    for f in ("grid.png", "image_prompt.png", "index.html", "manifest.jsonl", "summary.json"):
        assert (out / f).is_file(), f
    records = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 8 and all("score" in r for r in records)  # 8 prompts, best 1 each
    # the shipped unCLIP pipeline runs the same prompts beside it (side_by_side.png)
    unclip = [json.loads(x) for x in (out / "unclip" / "manifest.jsonl").read_text().splitlines()]
    assert len(unclip) == 8 and (out / "side_by_side.png").is_file()
    assert 0 <= json.loads((out / "summary.json").read_text())["unclip_checker_pass"] <= 1
    assert (
        main(["eval", "fidelity", str(out / "manifest.jsonl"), "--out", str(tmp_path / "f")]) == 0
    )


def test_demo_without_models_says_how_to_get_them(tmp_path, capsys) -> None:
    assert main(["demo", "--model", str(tmp_path / "none"), "--out", str(tmp_path / "o")]) == 2
    assert "tessera train --preset shapes" in capsys.readouterr().err


def test_eval_prompts_writes_a_balanced_benchmark(tmp_path) -> None:
    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import parse_prompt

    f = tmp_path / "prompts.txt"
    assert main(["eval", "prompts", "--n", "10", "--held-out-share", "0.5", "--out", str(f)]) == 0
    lines = f.read_text().splitlines()
    held = set(ShapesConfig().held_out)
    named = [any(f"{o.color} {o.shape}" in held for o in parse_prompt(p).objects) for p in lines]
    assert len(lines) == 10 and sum(named) == 5


def test_shipped_model_generates_by_default_and_matches_its_summary(tmp_path) -> None:
    from tessera.apps.demo import default_model_dir

    base = default_model_dir()
    summary = json.loads((base / "summary.json").read_text())
    assert summary["preset"] == "shapes" and summary["total_wall_s"] <= 5400  # 90 min budget
    out = tmp_path / "gen"
    assert main(["generate", "a red circle", "--n", "2", "--out", str(out)]) == 0
    m = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    size = json.loads((base / "pipeline" / "vae" / "config.json").read_text())["image_size"]
    assert len(m) == 2 and Image.open(out / m[0]["file"]).size == (size, size)

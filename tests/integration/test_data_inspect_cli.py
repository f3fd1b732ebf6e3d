"""``tessera data inspect``: counts, statistics, grid PNG and data_report.json."""

import json
import os
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datafixtures import build_bad_folder, build_shards, encode, noise_image, time_limit
from tessera.cli.main import main


def test_inspect_folder(tmp_path, capsys):
    expected = build_bad_folder(tmp_path / "data")
    cfg = tmp_path / "data.json"
    cfg.write_text(json.dumps({"kind": "data", "max_caption_chars": 200}))
    out = tmp_path / "out"
    code = main(
        ["data", "inspect", str(tmp_path / "data"), "--out", str(out), "--grid-size", "3",
         "--data-config", str(cfg)]
    )  # fmt: skip
    assert code == 0
    text = capsys.readouterr().out
    assert f"examples: {len(expected['good'])}" in text
    assert "skipped decompression_bomb: 2" in text
    assert "caption chars: min" in text and "image width: min" in text
    assert "vocabulary:" in text
    grid = Image.open(out / "grid.png")
    assert grid.size == (3 * 66 + 2, 3 * 66 + 2)
    report = json.loads((out / "data_report.json").read_text())
    assert report["skipped"] == expected["skipped"]
    stats = json.loads((out / "inspect.json").read_text())
    assert stats["examples"] == len(expected["good"]) and stats["vocabulary_size"] > 5


def test_inspect_shards_with_n_and_default_out(tmp_path, capsys, monkeypatch):
    pytest.importorskip("webdataset")
    build_shards(tmp_path / "shards", [3, 3])
    monkeypatch.chdir(tmp_path)
    assert main(["data", "inspect", "wds:shards/*.tar", "--n", "4"]) == 0
    text = capsys.readouterr().out
    assert "examples: 4" in text
    assert (tmp_path / "runs" / "inspect").is_dir()
    assert list((tmp_path / "runs" / "inspect").glob("*/data_report.json"))


def test_inspect_missing_source_is_a_one_line_error(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tessera: error: data source not found") and "\n" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["data", "inspect", "shapes", "--n", "-5"],
        ["data", "inspect", "shapes", "--n", "0"],
        ["data", "inspect", "shapes", "--n", "many"],
        ["data", "inspect", "shapes", "--grid-size", "0"],
        ["tokenizer", "train", "shapes", "--out", "x", "--n", "-1"],
    ],
)
def test_counts_must_be_positive(argv, capsys):
    """``--n -5`` used to reach itertools.islice and end in a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and ("must be >= 1" in err or "integer >= 1" in err)


def test_shapes_count_must_be_positive(tmp_path, capsys):
    assert main(["data", "shapes", "--out", str(tmp_path / "o"), "--n", "-5"]) == 2
    assert capsys.readouterr().err.strip() == "tessera: error: --n must be >= 1, got -5"


def test_inspect_does_not_hang_on_a_fifo(tmp_path, capsys):
    """``mkfifo pipe.jpg`` in a folder used to make inspect block forever."""
    root = tmp_path / "data"
    root.mkdir()
    (root / "good.png").write_bytes(encode(noise_image(16, 16), "PNG"))
    (root / "good.txt").write_text("a good one")
    os.mkfifo(root / "pipe.jpg")
    (root / "pipe.txt").write_text("caption")
    (root / "fifo_caption.png").write_bytes(encode(noise_image(16, 16), "PNG"))
    os.mkfifo(root / "fifo_caption.txt")
    with time_limit(20):
        assert main(["data", "inspect", str(root), "--out", str(tmp_path / "out")]) == 0
    text = capsys.readouterr().out
    assert "examples: 1" in text and "skipped unreadable_path: 2" in text

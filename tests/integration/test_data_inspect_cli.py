"""``tessera data inspect``: counts, statistics, grid PNG and data_report.json."""

import json
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datafixtures import build_bad_folder, build_shards
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

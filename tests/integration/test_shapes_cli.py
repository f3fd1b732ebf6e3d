"""``tessera data shapes`` end to end: folder and webdataset exports, byte-identical reruns."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile

import numpy as np
import pytest
from PIL import Image

from tessera.cli import data_shapes
from tessera.config.shapes import ShapesConfig
from tessera.data.shapes import ShapesSource, check_image, export_shapes, parse_prompt
from tessera.errors import ConfigError, DataError, TesseraError


def _run(argv: list[str]) -> int:
    """Run the command through its own parser (the CLI main adds only error printing)."""
    parser = argparse.ArgumentParser(prog="tessera data")
    data_shapes.register(parser.add_subparsers())
    args = parser.parse_args(["shapes", *argv])
    return args.func(args)


def _tree_digest(root) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def test_folder_export(tmp_path, capsys):
    out = tmp_path / "folder"
    assert _run(["--out", str(out), "--n", "12", "--split", "eval", "--size", "32"]) == 0
    summary = capsys.readouterr().out.strip()
    assert summary.count("\n") == 0 and "wrote 12 eval examples" in summary
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"{i:06d}.png" for i in range(12)] + [f"{i:06d}.txt" for i in range(12)]
    )
    src = ShapesSource(ShapesConfig(size=32), split="eval", n=12)
    for i in range(12):
        img = np.asarray(Image.open(out / f"{i:06d}.png"))
        np.testing.assert_array_equal(img, src.image(i))  # lossless round trip
        caps = (out / f"{i:06d}.txt").read_text().splitlines()
        assert tuple(caps) == src.captions(i) and len(caps) == 5
        assert check_image(img, src.prompt(i)).passed
        parse_prompt(caps[0])  # first caption canonical


def test_webdataset_export_is_deterministic(tmp_path, capsys):
    args = ["--n", "25", "--format", "webdataset", "--shard-size", "10", "--seed", "3"]
    a, b = tmp_path / "a", tmp_path / "b"
    assert _run(["--out", str(a), *args]) == 0
    assert _run(["--out", str(b), *args]) == 0
    assert "in 3 shards" in capsys.readouterr().out
    assert sorted(p.name for p in a.iterdir()) == [
        "shapes-train-00000.tar",
        "shapes-train-00001.tar",
        "shapes-train-00002.tar",
    ]
    assert _tree_digest(a) == _tree_digest(b)  # byte-identical tars
    with tarfile.open(a / "shapes-train-00002.tar") as tar:
        members = tar.getmembers()
        assert [m.name for m in members[:3]] == ["000020.png", "000020.txt", "000020.json"]
        assert len(members) == 15 and {m.mtime for m in members} == {0}
        meta = json.loads(tar.extractfile("000024.json").read())
        png = tar.extractfile("000024.png").read()
        text = tar.extractfile("000024.txt").read().decode()
    assert meta["key"] == "train-000024" and meta["index"] == 24 and meta["canvas"] == 64
    assert meta["captions"] == text.splitlines()
    assert {o["color"] + " " + o["shape"] for o in meta["objects"]}.isdisjoint(
        {"green triangle", "blue circle", "purple square"}
    )
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_png_bytes_identical_across_exports(tmp_path):
    for name in ("x", "y"):
        export_shapes(tmp_path / name, n=8, split="eval", size=48, seed=5)
    assert _tree_digest(tmp_path / "x") == _tree_digest(tmp_path / "y")
    export_shapes(tmp_path / "z", n=8, split="eval", size=48, seed=6)
    assert _tree_digest(tmp_path / "x") != _tree_digest(tmp_path / "z")


def test_progress_and_summary(tmp_path):
    seen = []
    s = export_shapes(tmp_path, n=7, format="webdataset", shard_size=3, progress=seen.append)
    assert sum(seen) == 7 and s.shards == 3 and s.files == 3 and s.n == 7 and s.size == 64


def test_user_errors(tmp_path):
    with pytest.raises(ConfigError, match="multiple of 8"):
        _run(["--out", str(tmp_path / "o"), "--n", "3", "--size", "36"])
    with pytest.raises(ConfigError, match="--n"):
        _run(["--out", str(tmp_path / "o"), "--n", "0"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a directory"):
        _run(["--out", str(tmp_path / "file"), "--n", "3"])
    with pytest.raises(ConfigError):
        export_shapes(tmp_path / "o", n=3, format="zip")  # type: ignore[arg-type]
    assert issubclass(ConfigError, TesseraError)


def test_through_the_console_entry_point(tmp_path, capsys):
    from tessera.cli.main import main

    main_args = ["data", "shapes", "--out", str(tmp_path / "m"), "--n", "3", "--size", "32"]
    assert main(main_args) == 0 and len(list((tmp_path / "m").iterdir())) == 6
    capsys.readouterr()  # drop the progress bar output of the first run
    assert main(["data", "shapes", "--out", str(tmp_path / "m"), "--n", "3", "--size", "30"]) == 2
    assert capsys.readouterr().err.strip() == (
        "tessera: error: shapes.size must be a multiple of 8 in [32, 512], got 30"
    )

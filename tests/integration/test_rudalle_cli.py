"""``tessera convert rudalle`` on a small folder in ruDALL-E's released layout (its
transformer's state dict as ``torch.save`` wrote it, a taming GumbelVQ Lightning checkpoint,
a YouTokenToMe ``bpe.model``), then ``tessera generate`` and ``serve`` from the result."""

from __future__ import annotations

import base64
import io
import json

import pytest
import torch
from PIL import Image

from helpers.rudalle_ref import small_rudalle
from tessera.cli.main import main


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    src = small_rudalle(tmp_path_factory.mktemp("rudalle"))
    out = src.parent / "converted"
    argv = ["convert", "rudalle", str(src), "--out", str(out), "--heads", "4",
            "--image-size", "16"]  # fmt: skip
    assert main(argv) == 0
    return src, out


def test_convert_writes_a_pipeline_folder(released) -> None:
    _, out = released
    index = json.loads((out / "model_index.json").read_text())
    kinds = {role: c["kind"] for role, c in index["components"].items()}
    assert kinds == {"transformer": "dalle", "vae": "vqgan", "tokenizer": "tokenizer"}
    cfg = json.loads((out / "transformer" / "config.json").read_text())
    assert (cfg["norm_placement"], cfg["mask_schedule"], cfg["output_head"]) == (
        "sandwich",
        "rudalle",
        "separate",
    )
    assert (cfg["bos_id"], cfg["eos_id"], cfg["text_vocab"], cfg["n_heads"]) == (2, 3, 64, 4)


def test_generate_and_serve(released, tmp_path) -> None:
    _, out = released
    gen = tmp_path / "gen"
    argv = ["generate", "Кот на фоне", "--model", str(out), "--n", "2", "--seed", "1",
            "--out", str(gen)]  # fmt: skip
    assert main(argv) == 0
    files = [json.loads(x)["file"] for x in (gen / "manifest.jsonl").read_text().splitlines()]
    assert len(files) == 2 and all(Image.open(gen / f).size == (16, 16) for f in files)

    pytest.importorskip("fastapi", reason="needs the [serve] extra")
    from fastapi.testclient import TestClient

    from tessera.apps.serve import ServeConfig, create_app
    from tessera.pipelines import load_pipeline

    app = create_app(ServeConfig(models=("dalle",)), pipelines={"dalle": load_pipeline(out)})
    with TestClient(app) as client:
        r = client.post("/api/generate", json={"prompt": "кот", "model": "dalle", "n": 1})
    assert r.status_code == 200, r.text
    (image,) = r.json()["images"]
    assert Image.open(io.BytesIO(base64.b64decode(image["png"]))).size == (16, 16)


def test_pickled_transformer_is_refused_in_one_line(released, tmp_path, capsys) -> None:
    src, _ = released
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pytorch_model_v3.bin")  # a pickled module
    argv = ["convert", "rudalle", str(src), "--transformer", str(tmp_path / "pytorch_model_v3.bin"),
            "--out", str(tmp_path / "x")]  # fmt: skip
    assert main(argv) != 0
    err = capsys.readouterr().err.strip()
    assert "never unpickles" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()

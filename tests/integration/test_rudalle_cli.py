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

from helpers.rudalle_ref import dalle_module, vae_module
from tessera.cli.main import main

TEXT_VOCAB, TEXT_LEN, GRID, IMAGE_VOCAB = 64, 8, 8, 32
CHARS = "\u2581абвгдежзийклмнопрстуфхцчшщъыьэюяё"
MERGES = [("\u2581", "к"), ("к", "о"), ("\u2581к", "о"), ("\u2581ко", "т"), ("н", "а")]


def write_bpe(path) -> None:
    """A YouTokenToMe model file: 4 specials, the characters, a few merges (< 64 ids)."""
    ids = {c: 4 + i for i, c in enumerate(CHARS)}
    lines = [f"{len(CHARS)} {len(MERGES)}", *(f"{ord(c)} {i}" for c, i in ids.items())]
    for a, b in MERGES:
        ids[a + b] = len(ids) + 4
        lines.append(f"{ids[a]} {ids[b]} {ids[a + b]}")
    lines.append("1 0 2 3")  # unk pad bos eos
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    src = tmp_path_factory.mktemp("rudalle")
    torch.manual_seed(0)
    dalle = dalle_module().DalleModel(
        device="cpu",
        num_layers=4,
        vocab_size=TEXT_VOCAB + TEXT_LEN,
        hidden_size=32,
        num_attention_heads=4,
        embedding_dropout_prob=0.1,
        attention_dropout_prob=0.1,
        output_dropout_prob=0.1,
        text_seq_length=TEXT_LEN,
        image_tokens_per_dim=GRID,
        image_vocab_size=IMAGE_VOCAB,
        cogview_sandwich_layernorm=True,
        cogview_pb_relax=True,
    )
    torch.save(dalle.state_dict(), src / "pytorch_model_v3.bin")
    ddconfig = dict(double_z=False, z_channels=32, resolution=16, in_channels=3, out_ch=3)
    ddconfig.update(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8], dropout=0.0)
    vq = vae_module().GumbelVQ(ddconfig, n_embed=IMAGE_VOCAB, embed_dim=32)
    sd = {**vq.state_dict(), "loss.discriminator.main.0.weight": torch.zeros(2)}
    torch.save({"state_dict": sd, "global_step": 7}, src / "vqgan.gumbelf8-sber.model.ckpt")
    write_bpe(src / "bpe.model")
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

"""The pipeline folder (model_index.json): round trip, sampling defaults, untrusted input."""

from __future__ import annotations

import json

import pytest
import torch

from tessera.config.presets import preset
from tessera.config.text import TokenizerConfig
from tessera.errors import CheckpointError
from tessera.models.dalle import DALLE
from tessera.pipelines import TextToImage, load_pipeline
from tessera.pipelines.base import MODEL_INDEX, read_index
from tessera.pipelines.dalle import export_checkpoint, save_pipeline
from tessera.text import TextTokenizer
from tessera.vae.model import DiscreteVAE


@pytest.fixture(scope="module")
def parts():
    torch.manual_seed(0)
    captions = ["a red circle", "a blue square above a green triangle"] * 20
    tok = TextTokenizer.train(captions, TokenizerConfig(vocab_size=280, max_length=16))
    return DALLE(preset("dalle", "tiny")), DiscreteVAE(preset("vae", "tiny")), tok


def test_round_trip_with_defaults_and_same_samples_as_the_checkpoint_layout(parts, tmp_path):
    model, vae, tok = parts
    defaults = {"temperature": 0.7, "top_k": 5, "guidance": 1.0}
    folder = save_pipeline(tmp_path / "p", model=model, vae=vae, tokenizer=tok, defaults=defaults)
    index = read_index(folder)
    assert index.pipeline == "dalle" and set(index.components) == {
        "transformer",
        "vae",
        "tokenizer",
    }
    pipe = load_pipeline(folder)
    assert isinstance(pipe, TextToImage) and pipe.kind == "dalle"
    assert pipe.settings.temperature == 0.7 and pipe.settings.top_k == 5
    assert "rerank" not in pipe.capabilities and pipe.image_size == vae.config.image_size
    legacy = load_pipeline(export_checkpoint(tmp_path / "c", model=model, vae=vae, tokenizer=tok))
    a = pipe.generate(["a red circle"], n=2, seed=3)
    b = legacy.generate(["a red circle"], n=2, seed=3, settings=pipe.settings)
    assert torch.equal(a.tokens, b.tokens)  # same weights, same seed, same settings


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["components"]["vae"].update(path="../elsewhere"), "plain subfolder"),
        (lambda d: d["components"]["vae"].update(path="/etc"), "plain subfolder"),
        (lambda d: d.update(pipeline="pickle"), "unknown pipeline kind"),
        (lambda d: d.update(format_version=99), "newer than this tessera reads"),
        (lambda d: d.update(extra=1), "unknown key"),
        (lambda d: d["components"]["vae"].update(kind="clip"), "is a 'clip', not 'vae'"),
        (lambda d: d["defaults"].update(temperature=-1), "bad sampling defaults"),
    ],
)
def test_bad_model_index_is_a_one_line_error(parts, tmp_path, edit, message):
    model, vae, tok = parts
    folder = save_pipeline(tmp_path / "p", model=model, vae=vae, tokenizer=tok)
    data = json.loads((folder / MODEL_INDEX).read_text())
    edit(data)
    (folder / MODEL_INDEX).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message) as info:
        load_pipeline(folder)
    assert "\n" not in str(info.value)


def test_not_json_and_missing_folder(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / MODEL_INDEX).write_text("{not json")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_pipeline(tmp_path / "p")
    with pytest.raises(CheckpointError, match="not found"):
        load_pipeline(tmp_path / "nope")

"""One loader for every kind: safetensors only, readable mismatches, legacy .pt opt-in (T4, T8)."""

import dataclasses
import pickle
from typing import ClassVar

import pytest
import torch
from torch import nn

import tessera
from tessera.checkpoint import (
    KindSpec,
    load_checkpoint,
    load_legacy_state_dict,
    register_kind,
    save,
)
from tessera.config.base import Config
from tessera.errors import CheckpointError, UnsafeCheckpointError


@dataclasses.dataclass(frozen=True, kw_only=True)
class ToyConfig(Config):
    kind: ClassVar[str] = "toy"
    vocab: int = 11
    width: int = 8


class Toy(nn.Module):
    """Embedding tied to the output head, like the DALL·E text/image heads may be."""

    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.embed = nn.Embedding(config.vocab, config.width)
        self.proj = nn.Linear(config.width, config.width)
        self.head = nn.Linear(config.width, config.vocab, bias=False)
        self.head.weight = self.embed.weight


register_kind("toy", KindSpec(config_cls=ToyConfig, build=Toy))


def _saved(tmp_path, cfg=None):
    cfg = cfg or ToyConfig()
    torch.manual_seed(0)
    model = Toy(cfg)
    path = save(tmp_path / "ckpt", config=cfg, model=model)
    return path, model


def test_round_trip_keeps_weights_and_ties(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, model = _saved(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    loaded = tessera.load(path)
    assert isinstance(loaded, Toy) and loaded.config == ToyConfig()
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    assert loaded.head.weight is loaded.embed.weight  # still tied after loading
    meta = load_checkpoint(path).metadata
    assert meta["format"] == "pt" and meta["kind"] == "toy" and "tessera_version" in meta


def test_save_is_atomic_and_refuses_overwrite(tmp_path):
    path, _ = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="already exists"):
        save(path, config=ToyConfig(), model=Toy(ToyConfig()))
    save(path, config=ToyConfig(width=4), model=Toy(ToyConfig(width=4)), overwrite=True)
    assert tessera.load(path).config.width == 4
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no temporary leftovers


def test_config_mismatch_is_one_readable_line(tmp_path):
    path, _ = _saved(tmp_path)
    (path / "config.json").write_text(ToyConfig(width=16).to_json())
    with pytest.raises(
        CheckpointError, match=r"shape mismatch.*file \(11, 8\) vs config \(11, 16\)"
    ):
        tessera.load(path)


def test_truncated_weights_name_the_file(tmp_path):
    path, _ = _saved(tmp_path)
    f = path / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-40])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        tessera.load(path)


@pytest.mark.parametrize(
    ("setup", "msg"),
    [
        (lambda p: None, "checkpoint not found"),
        (lambda p: p.mkdir(), "has no config.json"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text("{")), "cannot read"),
        (lambda p: (p.mkdir(), (p / "config.json").write_text('{"a": 1}')), "no 'kind'"),
        (
            lambda p: (p.mkdir(), (p / "config.json").write_text('{"kind": "zzz"}')),
            "unknown checkpoint kind",
        ),
        (
            lambda p: (p.mkdir(), (p / "config.json").write_text('{"kind": "toy", "wdth": 3}')),
            "unknown key 'wdth'",
        ),
        (
            lambda p: (p.mkdir(), (p / "config.json").write_text('{"kind": "toy"}')),
            "weights file not found",
        ),
    ],
)
def test_bad_directories_give_clear_errors(tmp_path, setup, msg):
    p = tmp_path / "c"
    setup(p)
    with pytest.raises(CheckpointError, match=msg):
        tessera.load(p)


def test_kind_assertion(tmp_path):
    path, _ = _saved(tmp_path)
    with pytest.raises(CheckpointError, match="holds a 'toy' checkpoint, expected 'vae'"):
        load_checkpoint(path, kind="vae")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_payload_is_never_executed(tmp_path):
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.pt"
    with evil.open("wb") as f:
        pickle.dump({"w": _Payload(marker)}, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="allow_legacy_pt"):
        load_legacy_state_dict(evil)
    with pytest.raises(UnsafeCheckpointError, match="objects other than tensors"):
        load_legacy_state_dict(evil, allow_legacy_pt=True)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="file, not a checkpoint directory.*allow_legacy_pt"):
        tessera.load(evil)


def test_legacy_state_dict_loads_weights_only_when_allowed(tmp_path):
    sd = Toy(ToyConfig()).state_dict()
    f = tmp_path / "old.pt"
    torch.save({"state_dict": sd}, f)
    loaded = load_legacy_state_dict(f, allow_legacy_pt=True)
    assert all(torch.equal(sd[k], loaded[k]) for k in sd)
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_legacy_state_dict(f, allow_legacy_pt=True)


def test_tokenizer_travels_with_the_model_and_keeps_its_config(tmp_path):
    from tessera.checkpoint import load_checkpoint
    from tessera.config import TokenizerConfig
    from tessera.text import TextTokenizer

    tok = TextTokenizer.train(
        ["a red circle", "a blue square above a red circle"] * 20,
        TokenizerConfig(vocab_size=300, max_length=12, dropout=0.0),
    )
    path = save(tmp_path / "c", config=ToyConfig(), model=Toy(ToyConfig()), tokenizer=tok)
    assert {"tokenizer.json", "tokenizer_config.json"} <= {p.name for p in path.iterdir()}
    loaded = load_checkpoint(path)
    assert loaded.tokenizer is not None
    assert loaded.tokenizer.max_length == 12 and loaded.tokenizer.config == tok.config
    assert loaded.tokenizer.encode("a red circle") == tok.encode("a red circle")

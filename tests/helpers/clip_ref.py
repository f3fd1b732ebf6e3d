"""Test-only CLIP references: transformers, open_clip (its torchvision-free modules) and
OpenAI's BPE vocabulary, which open_clip ships (``bpe_simple_vocab_16e6.txt.gz``): the
transformers tokenizer files of the tests are written from it, so no test downloads one."""

from __future__ import annotations

import gzip
import importlib.machinery
import importlib.util
import json
import sys
import types
from pathlib import Path
from typing import Any

import torch

from helpers.references import missing_reference

# prompts whose ids the converted tokenizers must reproduce: case, spacing, contractions,
# digits, punctuation, accents, emoji, an over-long prompt, the empty prompt
CORPUS = [
    "a small red circle above a blue square",
    "A photo of a CAT!",
    "  hello   world  ",
    "it's 3.5 o'clock, isn't it?",
    "naïve café — déjà vu",
    "emoji 😀 test, CJK 猫",
    "tabs\tand\nnewlines",
    "an oil painting of a fox " * 12,
    "",
]


def open_clip_root() -> Path:
    loaded = sys.modules.get("open_clip")
    if loaded is not None and getattr(loaded, "__path__", None):
        return Path(next(iter(loaded.__path__)))
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        missing_reference("open_clip_torch")
    return Path(next(iter(spec.submodule_search_locations)))


def open_clip_bpe() -> Path:
    return open_clip_root() / "bpe_simple_vocab_16e6.txt.gz"


def open_clip_modules() -> tuple[Any, Any]:
    """(open_clip.model, open_clip.tokenizer) without the package's ``__init__`` (which needs
    torchvision): only ``open_clip.utils`` names a torchvision class at import time (for
    ResNet towers these tests never build), so a stand-in is present while it imports."""
    if "open_clip.model" in sys.modules and "open_clip.tokenizer" in sys.modules:
        return sys.modules["open_clip.model"], sys.modules["open_clip.tokenizer"]
    root = open_clip_root()
    try:
        import ftfy  # noqa: F401  (open_clip's tokenizer needs it)
    except ImportError:
        missing_reference("ftfy")
    pkg = types.ModuleType("open_clip")
    pkg.__path__ = [str(root)]
    pkg.__spec__ = importlib.machinery.ModuleSpec("open_clip", None, is_package=True)
    pkg.__spec__.submodule_search_locations = [str(root)]
    sys.modules["open_clip"] = pkg
    stubs: dict[str, types.ModuleType] = {}
    if importlib.util.find_spec("torchvision") is None:
        for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc"):
            stubs[name] = sys.modules[name] = types.ModuleType(name)
        stubs["torchvision.ops.misc"].FrozenBatchNorm2d = type(  # type: ignore[attr-defined]
            "FrozenBatchNorm2d", (torch.nn.Module,), {}
        )
    try:
        import open_clip.utils  # noqa: F401
    finally:
        for name in stubs:  # nobody else may take the stand-in for torchvision
            sys.modules.pop(name, None)
    import open_clip.model as model
    import open_clip.tokenizer as tokenizer

    return model, tokenizer


def write_hf_tokenizer(folder: Path, *, pad: str = "<|endoftext|>") -> Path:
    """OpenAI's BPE as transformers' CLIP tokenizer files (vocab.json, merges.txt,
    tokenizer_config.json) in ``folder``, built from open_clip's merges exactly as the
    released ``vocab.json`` is (bytes, bytes + ``</w>``, merges, the two specials)."""
    from tessera.convert.clip import _bytes_to_unicode

    with gzip.open(open_clip_bpe()) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    merges = [tuple(line.split()) for line in lines]
    base = _bytes_to_unicode()
    words = base + [b + "</w>" for b in base] + ["".join(m) for m in merges]
    words += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({w: i for i, w in enumerate(words)}))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "model_max_length": 77,
                "bos_token": "<|startoftext|>",
                "eos_token": "<|endoftext|>",
                "pad_token": pad,
                "unk_token": "<|endoftext|>",
                "tokenizer_class": "CLIPTokenizer",
            }
        )
    )
    return folder


def transformers_clip() -> Any:
    try:
        import transformers
    except ImportError:
        missing_reference("transformers")
    return transformers


def small_text_config(*, legacy_eos: bool = False, width: int = 64) -> dict[str, Any]:
    """A tiny transformers CLIP text config over OpenAI's 49408-token vocabulary, 77 positions
    (``legacy_eos``: ``eos_token_id`` 2, as Karlo's text encoder config: argmax pooling)."""
    return {
        "vocab_size": 49408,
        "hidden_size": width,
        "intermediate_size": 4 * width,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "projection_dim": 32,
        "bos_token_id": 0 if legacy_eos else 49406,
        "eos_token_id": 2 if legacy_eos else 49407,
        "pad_token_id": 1 if legacy_eos else 49407,
    }


def small_vision_config() -> dict[str, Any]:
    return {
        "hidden_size": 64,
        "intermediate_size": 256,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "image_size": 32,
        "patch_size": 8,
        "projection_dim": 32,
    }

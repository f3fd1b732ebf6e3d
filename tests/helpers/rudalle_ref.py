"""ruDALL-E's own modules as test-only references, loaded from the installed ``rudalle`` wheel.

``import rudalle`` cannot work here: its package ``__init__`` imports the whole toolkit
(torchvision, an old ``transformers``, ``huggingface_hub.cached_download``, OpenCV, PyWavelets).
The reference code the parity tests need -- ``rudalle/dalle/{model,transformer,
image_attention,utils}.py`` and ``rudalle/vae/model.py`` -- imports none of that, so those files
are executed as they ship, as a package of their own, without running ``rudalle/__init__.py``.
The one import cut is ``rudalle.vae.decoder_dwt`` (PyWavelets), used only by the DWT decoder
variant (``dwt=True``), which the tests never build.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

from helpers.references import missing_reference


def _root() -> Path:
    spec = importlib.util.find_spec("rudalle")
    if spec is None or not spec.submodule_search_locations:
        missing_reference("rudalle")
    for name in ("einops", "taming"):
        if importlib.util.find_spec(name) is None:
            missing_reference(name if name == "einops" else "taming-transformers")
    return Path(next(iter(spec.submodule_search_locations)))


def _load(package: str, name: str, file: Path) -> types.ModuleType:
    full = f"{package}.{name}"
    if full in sys.modules:
        return sys.modules[full]
    spec = importlib.util.spec_from_file_location(full, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[full] = module
    spec.loader.exec_module(module)
    return module


def _package(name: str, path: Path) -> None:
    if name not in sys.modules:
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules[name] = pkg


def dalle_module() -> types.ModuleType:
    """``rudalle/dalle/model.py`` (its ``DalleModel``), with its sibling modules."""
    root = _root()
    _package("_rudalle_ref", root)
    _package("_rudalle_ref.dalle", root / "dalle")
    for name in ("utils", "image_attention", "transformer"):
        _load("_rudalle_ref.dalle", name, root / "dalle" / f"{name}.py")
    return _load("_rudalle_ref.dalle", "model", root / "dalle" / "model.py")


def vae_module() -> types.ModuleType:
    """``rudalle/vae/model.py`` (``VQGanGumbelVAE``, ``GumbelVQ`` on taming's Encoder/Decoder)."""
    root = _root()
    _package("_rudalle_ref", root)
    _package("_rudalle_ref.vae", root / "vae")
    stub = types.ModuleType("_rudalle_ref.vae.decoder_dwt")
    stub.DecoderDWT = None  # only for dwt=True
    sys.modules.setdefault("_rudalle_ref.vae.decoder_dwt", stub)
    return _load("_rudalle_ref.vae", "model", root / "vae" / "model.py")


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


def small_rudalle(src: Path) -> Path:
    """A small random model in ruDALL-E's released layout, built with its own code: the
    transformer state dict (4 layers, 32 wide, 8 text + 8x8 image tokens), a Lightning-style
    Gumbel VQGAN checkpoint (16 px) and a YouTokenToMe vocabulary, in ``src``."""
    import torch

    src.mkdir(parents=True, exist_ok=True)
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
    return src

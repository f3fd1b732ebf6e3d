"""Sber's ruDALL-E (Malevich) -> a tessera DALL·E pipeline folder.

ruDALL-E is the one released transformer built the DALL·E way: decoder-only over
``[128 text; 32 x 32 image]`` tokens with row / column / convolutional sparse masks. Three
files make it (``sberbank-ai/rudalle-Malevich`` and ``shonenkov/rudalle-utils`` on the HF hub):

- the transformer's state dict (``pytorch_model_v3.bin``, a plain ``torch.save`` of tensors:
  read with ``weights_only=True``, or its ``.safetensors`` form);
- its VQGAN (``vqgan.gumbelf8-sber.model.ckpt``: taming-transformers' ``GumbelVQ``, see
  :mod:`tessera.convert.vqgan`);
- its YouTokenToMe BPE (``bpe.model``, a text file), converted to an HF ``tokenizers`` BPE that
  gives YouTokenToMe's ids (:func:`yttm_to_hf`).

Where ruDALL-E departs from the paper the converted :class:`~tessera.config.dalle.DalleConfig`
sets the matching option (docs/rudalle.md lists them): ``[bos] caption [eos]`` text
(``eos_id``), CogView's sandwich LayerNorm (``norm_placement``), its mask schedule
(``mask_schedule``) and its untied output layer over the concatenated vocabulary
(``output_head``). The rest is the paper's layout already: one padding token per text position
(ruDALL-E's ``vocab_size - 128 + p``, tessera's ``text_vocab + p``), learned text positions, row +
column image positions, fused QKV, tanh-GELU MLP of 4x, the same three masks.

The weights do not hold the head count (Malevich: 16) and only the v3 layout (``hf_version
v3``: Malevich's ``pytorch_model_v3.bin``, Surrealist XL, Kandinsky) is supported: v2 models
(Emojich, ``Malevich_v2``) prepend another ``<bos>`` and wrap the conv mask around the grid.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tessera.config.dalle import DalleConfig
from tessera.config.text import TokenizerConfig
from tessera.convert.vqgan import load_vqgan, read_state_dict
from tessera.errors import CheckpointError, ConfigError, TokenizerError
from tessera.models.dalle import DALLE
from tessera.nn.masks import attention_mask

__all__ = [
    "config_from_rudalle",
    "convert_rudalle",
    "convert_rudalle_state_dict",
    "load_rudalle",
    "yttm_to_hf",
    "yttm_tokenizer",
]

_MAX_NAMED = 3
# YouTokenToMe's word-boundary mark (U+2581) and the characters it splits words on: C
# ``isspace`` below 256 and the mark itself (youtokentome/cpp/bpe.cpp ``is_space``)
SPACE = "\u2581"
_YTTM_SPACES = " \t\n\v\f\r" + SPACE
_LAYER = {
    "input_layernorm": "attn_norm",
    "attention.query_key_value": "attn.qkv",
    "attention.dense": "attn.proj",
    "before_first_addition_layernorm": "attn_out_norm",
    "post_attention_layernorm": "mlp_norm",
    "mlp.dense_h_to_4h": "mlp.fc",
    "mlp.dense_4h_to_h": "mlp.proj",
    "before_second_addition_layernorm": "mlp_out_norm",
}
_TOP = {
    "text_embeddings.weight": "text_emb.weight",
    "image_embeddings.weight": "image_emb.weight",
    "image_row_embeddings.weight": "row_pos",
    "image_col_embeddings.weight": "col_pos",
    "transformer.final_layernorm.weight": "norm.weight",
    "transformer.final_layernorm.bias": "norm.bias",
    "to_logits.0.weight": "head_norm.weight",
    "to_logits.0.bias": "head_norm.bias",
    "to_logits.1.weight": "head.weight",
    "to_logits.1.bias": "head.bias",
}
_MASKS = {"row_mask": "row", "col_mask": "column", "conv_mask": "conv"}


def _named(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_NAMED])
    return shown + (f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else "")


def _need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(
            f"missing key {key!r} (first key is {next(iter(sd))!r}): not a ruDALL-E "
            "DalleModel state dict"
        )
    return sd[key]


# -- the transformer -------------------------------------------------------------------------


def config_from_rudalle(
    sd: Mapping[str, torch.Tensor], *, n_heads: int = 16, conv_kernel: int = 11
) -> DalleConfig:
    """The :class:`DalleConfig` of a ruDALL-E (v3) ``DalleModel`` state dict, from its shapes;
    ``n_heads`` is not in the tensors (Malevich: 16)."""
    text_table, d = _need(sd, "text_embeddings.weight").shape
    text_len = int(_need(sd, "text_pos_embeddings.weight").shape[0]) - 1  # one unused row
    layers = {int(m[1]) for k in sd if (m := re.match(r"transformer\.layers\.(\d+)\.", k))}
    if not layers or sorted(layers) != list(range(len(layers))):
        raise CheckpointError("no transformer.layers.N.* keys numbered from 0: not ruDALL-E")
    try:
        return DalleConfig(
            text_vocab=int(text_table) - text_len,
            text_len=text_len,
            image_vocab=int(_need(sd, "image_embeddings.weight").shape[0]),
            grid_size=int(_need(sd, "image_row_embeddings.weight").shape[0]),
            d_model=int(d),
            n_layers=len(layers),
            n_heads=n_heads,
            mlp_ratio=int(_need(sd, "transformer.layers.0.mlp.dense_h_to_4h.weight").shape[0])
            // int(d),
            conv_kernel=conv_kernel,
            bos_id=2,
            eos_id=3,
            norm_placement="sandwich",
            mask_schedule="rudalle",
            output_head="separate",
        )
    except ConfigError as e:
        raise CheckpointError(f"the weights imply an unsupported config: {e}") from None


def _check_mask(name: str, value: torch.Tensor, cfg: DalleConfig) -> None:
    """ruDALL-E stores its three masks as buffers: they must be tessera's, bit for bit."""
    g = cfg.grid_size
    want = attention_mask(_MASKS[name], cfg.text_len, g, g, conv_kernel=cfg.conv_kernel)
    if tuple(value.shape) != tuple(want.shape) or not torch.equal(value.bool(), want):
        raise CheckpointError(
            f"transformer.{name} differs from tessera's {_MASKS[name]} mask "
            f"(text_len {cfg.text_len}, grid {g}, conv kernel {cfg.conv_kernel}): a v2 model "
            "(its conv mask wraps around the grid) or another layout, not supported"
        )


def convert_rudalle_state_dict(
    sd: Mapping[str, torch.Tensor], cfg: DalleConfig
) -> dict[str, torch.Tensor]:
    """Rename a ruDALL-E ``DalleModel`` state dict onto :class:`~tessera.models.dalle.DALLE`
    (built with ``cfg``). Unknown keys, missing keys and shape mismatches are one-line
    :class:`CheckpointError`\\ s naming them; the stored masks are checked, then dropped."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        if key in _TOP:
            out[_TOP[key]] = value
        elif key == "text_pos_embeddings.weight":
            out["text_pos"] = value[: cfg.text_len]  # row text_len is never read (v3)
        elif key.startswith("transformer.") and key.removeprefix("transformer.") in _MASKS:
            _check_mask(key.removeprefix("transformer."), value, cfg)
        elif m := re.match(r"transformer\.layers\.(\d+)\.(.+)\.(weight|bias)$", key):
            if m[2] not in _LAYER:
                unknown.append(key)
            else:
                out[f"blocks.{m[1]}.{_LAYER[m[2]]}.{m[3]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointError(f"{len(unknown)} unknown ruDALL-E key(s): {_named(unknown)}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in DALLE(cfg).state_dict().items()}
    missing = [k for k in expected if k not in out]
    bad = [k for k in out if k in expected and tuple(out[k].shape) != expected[k]]
    if missing:
        raise CheckpointError(f"{len(missing)} missing key(s) (tessera names): {_named(missing)}")
    if bad:
        k = bad[0]
        raise CheckpointError(
            f"{len(bad)} shape mismatch(es), e.g. {k!r}: {tuple(out[k].shape)} vs {expected[k]}"
        )
    return out


def load_rudalle(sd: Mapping[str, torch.Tensor], *, n_heads: int = 16) -> DALLE:
    """A :class:`DALLE` (eval mode, float32) holding a ruDALL-E state dict."""
    cfg = config_from_rudalle(sd, n_heads=n_heads)
    model = DALLE(cfg)
    state = convert_rudalle_state_dict(sd, cfg)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


# -- the BPE ---------------------------------------------------------------------------------


def _read_yttm(path: Path) -> tuple[dict[int, int], list[tuple[int, int, int]], tuple[int, ...]]:
    """A YouTokenToMe ``bpe.model`` (text): ({codepoint: id}, [(x, y, z) merges in priority
    order], (unk, pad, bos, eos) ids)."""
    try:
        rows = [line.split() for line in path.read_text(encoding="utf-8").splitlines()]
        n_chars, n_rules = int(rows[0][0]), int(rows[0][1])
        chars = {int(c): int(i) for c, i in rows[1 : 1 + n_chars]}
        rules = [(int(x), int(y), int(z)) for x, y, z in rows[1 + n_chars : 1 + n_chars + n_rules]]
        specials = tuple(int(v) for v in rows[1 + n_chars + n_rules])
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read YouTokenToMe model {path}: {e}") from None
    except (IndexError, ValueError):
        raise TokenizerError(f"{path} is not a YouTokenToMe BPE model file") from None
    if len(specials) != 4:
        raise TokenizerError(f"{path}: expected 4 special token ids, got {len(specials)}")
    return chars, rules, specials


def yttm_to_hf(path: str | Path, *, lowercase: bool = True) -> Any:
    """YouTokenToMe's BPE as an HF ``tokenizers.Tokenizer`` giving the same ids.

    YouTokenToMe splits text into words at C-``isspace`` characters and at U+2581, prefixes
    each word with U+2581, maps each character to its id (a run of unknown characters to one
    ``<UNK>``) and applies its merge rules lowest index first. The HF form: a ``Split`` on
    those characters, ``Metaspace`` to prefix every word, a BPE model whose vocabulary strings
    are the merged characters (every YouTokenToMe id gets one string, specials
    ``<PAD> <UNK> <BOS> <EOS>`` included), merges in YouTokenToMe's order, ``fuse_unk``.
    ``lowercase``: add ``Lowercase`` + ``Strip`` normalisation, which ruDALL-E's pipeline
    applies to every prompt before YouTokenToMe (``text.lower().strip()``).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers as pre

    path = Path(path)
    chars, rules, (unk, pad, bos, eos) = _read_yttm(path)
    strings: dict[int, str] = {pad: "<PAD>", unk: "<UNK>", bos: "<BOS>", eos: "<EOS>"}
    for cp, i in chars.items():
        strings[i] = chr(cp)
    for x, y, z in rules:
        if x not in strings or y not in strings:
            raise TokenizerError(f"{path}: merge rule {x} {y} -> {z} uses an unknown id")
        strings[z] = strings[x] + strings[y]
    n = len(strings)
    if sorted(strings) != list(range(n)):
        raise TokenizerError(f"{path}: token ids are not 0..{n - 1}")
    vocab = {s: i for i, s in strings.items()}
    if len(vocab) != n:  # two ids spelled alike: an HF BPE vocabulary maps strings to one id
        seen: dict[str, int] = {}
        dup = next(
            (s, seen[s], i) for i, s in sorted(strings.items()) if seen.setdefault(s, i) != i
        )
        raise TokenizerError(
            f"{path}: ids {dup[1]} and {dup[2]} are both {dup[0]!r}; an HF BPE cannot hold two "
            "ids with one spelling, so this vocabulary does not convert exactly"
        )
    if SPACE not in vocab:
        raise TokenizerError(f"{path}: no U+2581 word-boundary token: not a YouTokenToMe model")
    merges = [(strings[x], strings[y]) for x, y, _ in rules]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<UNK>", fuse_unk=True))
    if lowercase:
        tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    spaces = "[" + re.escape(_YTTM_SPACES) + "]+"
    tok.pre_tokenizer = pre.Sequence(
        [
            pre.Split(Regex(spaces), behavior="removed"),
            pre.Metaspace(replacement=SPACE, prepend_scheme="always", split=False),
        ]
    )
    tok.decoder = decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=False)
    tok.add_special_tokens(
        [
            AddedToken(t, special=True, normalized=False)
            for t in ("<PAD>", "<UNK>", "<BOS>", "<EOS>")
        ]
    )
    return tok


def yttm_tokenizer(path: str | Path, *, text_len: int = 128) -> Any:
    """ruDALL-E's BPE as a :class:`~tessera.text.TextTokenizer` (no BPE dropout; captions of
    at most ``text_len - 2`` tokens, the room between ``<BOS>`` and ``<EOS>``)."""
    from tessera.text import TextTokenizer

    hf = yttm_to_hf(path)
    n = hf.get_vocab_size(with_added_tokens=True)
    cfg = TokenizerConfig(
        vocab_size=max(n, 260),
        max_length=max(text_len - 2, 1),
        dropout=0.0,
        pad_token="<PAD>",
        bos_token="<BOS>",
        eos_token="<EOS>",
    )
    return TextTokenizer(hf, cfg)


# -- the whole pipeline ----------------------------------------------------------------------

_NAMES = {
    "transformer": ("pytorch_model_v3", "pytorch_model", "dalle", "transformer"),
    "vqgan": ("vqgan.gumbelf8-sber.model", "vqgan.gumbelf8-sber", "vqgan"),
    "bpe": ("bpe",),
}
_SUFFIXES = {
    "transformer": (".safetensors", ".bin", ".pt", ".pth"),
    "vqgan": (".safetensors", ".ckpt", ".pt", ".pth"),
    "bpe": (".model",),
}


def find_file(src: Path, what: str) -> Path:
    """The ``what`` file (transformer / vqgan / bpe) of a ruDALL-E download folder."""
    for stem in _NAMES[what]:
        for suffix in _SUFFIXES[what]:
            if (src / f"{stem}{suffix}").is_file():
                return src / f"{stem}{suffix}"
    tried = ", ".join(f"{s}{x}" for s in _NAMES[what] for x in _SUFFIXES[what][:2])
    raise CheckpointError(f"{src}: no {what} file (looked for {tried}); pass --{what} FILE")


def convert_rudalle(
    src: str | Path | None,
    out: str | Path,
    *,
    transformer: str | Path | None = None,
    vqgan: str | Path | None = None,
    bpe: str | Path | None = None,
    n_heads: int = 16,
    image_size: int = 256,
    dtype: str | None = None,
    defaults: dict[str, Any] | None = None,
) -> Path:
    """Write a tessera DALL·E pipeline folder (transformer, VQGAN, tokenizer) from ruDALL-E's
    files: ``src`` a folder holding them under their released names, or each given."""
    from tessera.pipelines.dalle import save_pipeline

    folder = Path(src) if src is not None else None

    def pick(given: str | Path | None, what: str) -> Path:
        if given is not None:
            return Path(given)
        if folder is None:
            raise CheckpointError(f"no {what} file: give SRC or --{what}")
        return find_file(folder, what)

    sd = read_state_dict(pick(transformer, "transformer"), "ruDALL-E transformer")
    model = load_rudalle(sd, n_heads=n_heads)
    vq = load_vqgan(pick(vqgan, "vqgan"), image_size=image_size)
    tok = yttm_tokenizer(pick(bpe, "bpe"), text_len=model.config.text_len)
    # ruDALL-E's own defaults: top_k 1024, top_p 0.99 (Malevich's README), temperature 1
    settings = {"top_k": 1024, "top_p": 0.99} if defaults is None else defaults
    return save_pipeline(out, model=model, vae=vq, tokenizer=tok, defaults=settings, dtype=dtype)

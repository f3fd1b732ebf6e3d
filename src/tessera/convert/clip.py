"""CLIP from the two common released layouts -> a tessera CLIP checkpoint (+ tokenizer).

- **transformers** (HF) folders: a ``CLIPModel`` folder, or a ``CLIPTextModelWithProjection``
  folder together with a ``CLIPVisionModelWithProjection`` (or ``CLIPModel``) folder for the
  image tower (Karlo ships only the text encoder; OpenAI's ViT-L/14 supplies the image side).
- **open_clip** state dicts (OpenAI's own layout, which tessera's :class:`CLIP` keeps), with
  the model config (open_clip's JSON) or the activation given, since the weights do not say
  whether the model uses QuickGELU (OpenAI's) or GELU (LAION's).

Names map one to one (transformers' ``q_proj``/``k_proj``/``v_proj`` are fused into
``in_proj_weight``; its ``*_projection.weight`` are the transposes of OpenAI's ``proj``
matrices); every unknown, missing or mis-shaped key is a one-line error.

**Pooling.** transformers pools the text at the first ``eos_token_id`` -- or, in configs that
still carry the legacy ``eos_token_id`` 2 (Karlo's text encoder), at the *largest* id of the
row (``argmax``); open_clip pools at ``argmax`` as well. With OpenAI's BPE the end-of-text
token (49407) is the largest id, so both are its first occurrence, which is what tessera
reads (``eos_id``): the converter checks that the tokenizer's end-of-text id is the
vocabulary's last.

**Tokenizer.** OpenAI's BPE (``vocab.json`` + ``merges.txt``, a ``tokenizer.json``, or
open_clip's ``bpe_simple_vocab_16e6.txt.gz``) becomes an HF ``tokenizers`` pipeline built like
transformers' ``CLIPTokenizer`` (NFC, whitespace runs -> one space, lower case; CLIP's word
regex; byte-level BPE with ``</w>`` word ends), wrapped as a :class:`TextTokenizer` that adds
``<|startoftext|>`` and ``<|endoftext|>`` and pads as the source does (transformers: with
``<|endoftext|>``; open_clip: with id 0). Differences of method: open_clip and the slow
tokenizer first run ``ftfy.fix_text`` and HTML unescaping (the identity on ordinary text);
a special token typed inside a prompt is text to tessera, a control token to transformers.

**Images.** tessera's CLIP takes [0, 1] images at its input size and normalises them with the
stored mean/std (read from ``preprocessor_config.json`` or open_clip's ``preprocess_cfg``);
transformers' image processor resizes with PIL (bicubic, shortest side) and centre-crops,
tessera resizes tensors (bilinear, antialiased) where a pipeline must; the networks agree
given the same pixels.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tessera.config.clip import OPENAI_MEAN, OPENAI_STD, CLIPConfig
from tessera.config.text import TokenizerConfig
from tessera.convert.weights import load_checked, named, read_json, read_state_dict, rename_state
from tessera.errors import CheckpointError, ConfigError
from tessera.models.clip import CLIP, check_compatible
from tessera.text import TextTokenizer

__all__ = [
    "clip_bpe_tokenizer",
    "config_from_hf",
    "convert_hf_clip",
    "convert_open_clip",
    "hf_clip_key",
    "hf_text_state",
    "read_hf_tokenizer",
    "read_open_clip_tokenizer",
    "save_clip",
]

HF_BOS, HF_EOS = "<|startoftext|>", "<|endoftext|>"
OPEN_CLIP_BOS, OPEN_CLIP_EOS = "<start_of_text>", "<end_of_text>"
_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


# -- the tokenizer ---------------------------------------------------------------------------


def clip_bpe_tokenizer(
    vocab: Mapping[str, int],
    merges: list[tuple[str, str]],
    *,
    bos: str,
    eos: str,
    pad: str,
    max_length: int = 77,
) -> TextTokenizer:
    """OpenAI CLIP's BPE as a tessera :class:`TextTokenizer`: the HF ``tokenizers`` pipeline of
    transformers' ``CLIPTokenizer``, ``<bos>`` added, ``<eos>`` pooled, ``pad`` padding."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    for name in (bos, eos, pad):
        if name not in vocab:
            raise CheckpointError(f"the CLIP vocabulary has no token {name!r}")
    tok = Tokenizer(
        BPE(
            vocab=dict(vocab),
            merges=list(merges),
            dropout=None,
            continuing_subword_prefix="",
            end_of_word_suffix="</w>",
            fuse_unk=False,
            unk_token=eos,
        )
    )
    tok.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
    )
    specials = "|".join(re.escape(t) for t in (bos, eos))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(f"{specials}|{_WORDS}"), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
    )
    tok.decoder = decoders.Sequence(
        [decoders.ByteLevel(), decoders.Replace("</w>", " "), decoders.Strip(" ", 0, 1)]
    )
    tok.add_special_tokens([AddedToken(t, special=True) for t in dict.fromkeys((bos, eos))])
    cfg = TokenizerConfig(
        vocab_size=max(len(vocab), 260),
        max_length=max_length,
        dropout=0.0,
        pad_token=pad,
        bos_token=bos,
        eos_token=eos,
        add_bos=True,
    )
    return TextTokenizer(tok, cfg)


def _token_text(value: Any) -> str | None:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _merges(lines: list[Any]) -> list[tuple[str, str]]:
    out = []
    for m in lines:
        pair = m.split(" ") if isinstance(m, str) else list(m)
        if len(pair) != 2:
            raise CheckpointError(f"bad BPE merge {m!r}")
        out.append((pair[0], pair[1]))
    return out


def read_hf_tokenizer(folder: str | Path) -> TextTokenizer:
    """transformers' CLIP tokenizer folder (``tokenizer.json``, or ``vocab.json`` +
    ``merges.txt``; special tokens from ``special_tokens_map.json`` / ``tokenizer_config.json``;
    ``model_max_length``) -> :class:`TextTokenizer` with the same ids."""
    folder = Path(folder)
    extra: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (folder / name).is_file():
            extra.update(read_json(folder / name))
    if (folder / "tokenizer.json").is_file():
        model = read_json(folder / "tokenizer.json").get("model") or {}
        if model.get("type") != "BPE":
            raise CheckpointError(f"{folder / 'tokenizer.json'}: not a BPE tokenizer")
        vocab, merges = model.get("vocab") or {}, _merges(model.get("merges") or [])
        for added in read_json(folder / "tokenizer.json").get("added_tokens") or []:
            vocab.setdefault(added["content"], added["id"])
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = read_json(folder / "vocab.json")
        text = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = _merges([line for line in text if line and not line.startswith("#version")])
    else:
        raise CheckpointError(
            f"{folder}: no CLIP tokenizer (tokenizer.json, or vocab.json + merges.txt)"
        )
    bos = _token_text(extra.get("bos_token")) or HF_BOS
    eos = _token_text(extra.get("eos_token")) or HF_EOS
    pad = _token_text(extra.get("pad_token")) or eos
    length = extra.get("model_max_length", 77)
    length = 77 if not isinstance(length, int) or length > 10**6 else length
    return clip_bpe_tokenizer(vocab, merges, bos=bos, eos=eos, pad=pad, max_length=length)


def _bytes_to_unicode() -> list[str]:
    """GPT-2's reversible byte -> printable character table (the order open_clip uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def read_open_clip_tokenizer(path: str | Path, *, max_length: int = 77) -> TextTokenizer:
    """open_clip's ``bpe_simple_vocab_16e6.txt.gz`` -> :class:`TextTokenizer` with the ids of
    open_clip's ``SimpleTokenizer`` (its vocabulary is built from the merges: 256 bytes, the
    same with ``</w>``, the merges, ``<start_of_text>``, ``<end_of_text>``; it pads with 0)."""
    path = Path(path)
    try:
        with gzip.open(path) as f:
            lines = f.read().decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CheckpointError(f"cannot read {path} as open_clip's BPE merges: {e}") from None
    merges = _merges(lines[1 : 49152 - 256 - 2 + 1])
    base = _bytes_to_unicode()
    words = base + [b + "</w>" for b in base] + ["".join(m) for m in merges]
    words += [OPEN_CLIP_BOS, OPEN_CLIP_EOS]
    vocab = {w: i for i, w in enumerate(words)}
    pad = next(w for w, i in vocab.items() if i == 0)  # open_clip pads with id 0
    return clip_bpe_tokenizer(
        vocab, merges, bos=OPEN_CLIP_BOS, eos=OPEN_CLIP_EOS, pad=pad, max_length=max_length
    )


# -- transformers' layout ---------------------------------------------------------------------

_HF_LAYER = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$")
_HF_BLOCK = {
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    # fused below into attn.in_proj_weight / in_proj_bias
    "self_attn.q_proj.weight": "attn.q.weight",
    "self_attn.k_proj.weight": "attn.k.weight",
    "self_attn.v_proj.weight": "attn.v.weight",
    "self_attn.q_proj.bias": "attn.q.bias",
    "self_attn.k_proj.bias": "attn.k.bias",
    "self_attn.v_proj.bias": "attn.v.bias",
}
_HF_FLAT = {
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "text_projection.weight": "text_projection",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "visual_projection.weight": "visual.proj",
    "logit_scale": "logit_scale",
}
_TRANSPOSED = ("text_projection", "visual.proj")


def hf_clip_key(key: str) -> str | None:
    """transformers' CLIP state-dict name -> tessera's (None: not a CLIP weight)."""
    if key in _HF_FLAT:
        return _HF_FLAT[key]
    m = _HF_LAYER.match(key)
    if m and m[3] in _HF_BLOCK:
        prefix = "transformer" if m[1] == "text" else "visual.transformer"
        return f"{prefix}.resblocks.{m[2]}.{_HF_BLOCK[m[3]]}"
    return None


def _hf_ignored(key: str) -> bool:
    return key.endswith("embeddings.position_ids")  # a buffer older checkpoints saved


def _fuse_qkv(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``attn.q/k/v.weight|bias`` -> ``attn.in_proj_weight|bias`` (rows q, k, v)."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^(.*\.attn)\.([qkv])\.(weight|bias)$", k)
        if m is None:
            out[k] = v.t().contiguous() if k in _TRANSPOSED else v
        elif m[2] == "q":
            parts = [state.get(f"{m[1]}.{x}.{m[3]}") for x in "qkv"]
            if any(p is None for p in parts):
                raise CheckpointError(f"{m[1]}: q, k and v projections must all be present")
            out[f"{m[1]}.in_proj_{m[3]}"] = torch.cat(parts, dim=0)  # type: ignore[arg-type]
    return out


def _hf_source_name(key: str) -> str:
    inverse = {v: k for k, v in _HF_FLAT.items()}
    if key in inverse:
        return inverse[key]
    m = re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$", key)
    if m:
        tower = "vision_model" if m[1] else "text_model"
        block = {v: k for k, v in _HF_BLOCK.items()}.get(m[3], m[3])
        return f"{tower}.encoder.layers.{m[2]}.{block}"
    return key


def hf_text_state(sd: Mapping[str, torch.Tensor], *, what: str) -> dict[str, torch.Tensor]:
    """The text tower of a transformers CLIP state dict in tessera's names (unknown keys are
    one-line errors; vision keys are refused here)."""
    state = rename_state(sd, hf_clip_key, what=what, ignore=_hf_ignored)
    state.pop("logit_scale", None)
    vision = [k for k in state if k.startswith("visual.")]
    if vision:
        raise CheckpointError(f"{what}: unexpected image-tower keys in a text encoder")
    return _fuse_qkv(state)


def _activation(act: Any, where: str) -> str:
    if act in ("quick_gelu", "gelu"):
        return str(act)
    raise CheckpointError(f"{where}: activation {act!r} is not supported (quick_gelu or gelu)")


def _mlp_ratio(hidden: int, inner: int, where: str) -> int:
    if inner % hidden:
        raise CheckpointError(f"{where}: MLP width {inner} is not a multiple of {hidden}")
    return inner // hidden


def config_from_hf(
    text: Mapping[str, Any],
    vision: Mapping[str, Any],
    *,
    projection_dim: int,
    tokenizer: TextTokenizer,
    image_mean: tuple[float, float, float] = OPENAI_MEAN,
    image_std: tuple[float, float, float] = OPENAI_STD,
    logit_scale_init: float | None = None,
) -> CLIPConfig:
    """tessera's :class:`CLIPConfig` from transformers' text and vision config dicts."""
    t_act = _activation(text.get("hidden_act", "quick_gelu"), "text_config")
    v_act = _activation(vision.get("hidden_act", "quick_gelu"), "vision_config")
    if t_act != v_act:
        raise CheckpointError(f"the towers use different activations ({t_act}, {v_act})")
    tw, vw = int(text["hidden_size"]), int(vision["hidden_size"])
    t_ratio = _mlp_ratio(tw, int(text["intermediate_size"]), "text_config")
    v_ratio = _mlp_ratio(vw, int(vision["intermediate_size"]), "vision_config")
    if t_ratio != v_ratio:
        raise CheckpointError(f"the towers use different MLP ratios ({t_ratio}, {v_ratio})")
    for cfg, name in ((text, "text_config"), (vision, "vision_config")):
        eps = cfg.get("layer_norm_eps", 1e-5)
        if abs(float(eps) - 1e-5) > 1e-12:
            raise CheckpointError(f"{name}: layer_norm_eps {eps} is not supported (1e-5)")
    vocab = int(text["vocab_size"])
    eos = tokenizer.eos_id
    legacy = text.get("eos_token_id", 2) == 2  # transformers then pools at the argmax id
    if legacy and eos != vocab - 1:
        raise CheckpointError(
            f"the text config pools at the largest id (legacy eos_token_id 2), but the "
            f"tokenizer's end-of-text id {eos} is not the vocabulary's last ({vocab - 1})"
        )
    if not legacy and text["eos_token_id"] != eos:
        raise CheckpointError(
            f"the text config pools at id {text['eos_token_id']}; the tokenizer ends texts "
            f"with {eos}"
        )
    fields: dict[str, Any] = {
        "embed_dim": projection_dim,
        "image_size": int(vision["image_size"]),
        "patch_size": int(vision["patch_size"]),
        "vision_width": vw,
        "vision_layers": int(vision["num_hidden_layers"]),
        "vision_heads": int(vision["num_attention_heads"]),
        "vocab_size": vocab,
        "context_length": int(text["max_position_embeddings"]),
        "text_width": tw,
        "text_layers": int(text["num_hidden_layers"]),
        "text_heads": int(text["num_attention_heads"]),
        "mlp_ratio": t_ratio,
        "activation": t_act,
        "eos_id": eos,
        "bos_id": tokenizer.bos_id if tokenizer.config.add_bos else None,
        "image_mean": tuple(float(x) for x in image_mean),
        "image_std": tuple(float(x) for x in image_std),
    }
    if logit_scale_init is not None:
        fields["logit_scale_init"] = float(logit_scale_init)
    try:
        return CLIPConfig(**fields)
    except ConfigError as e:
        raise CheckpointError(f"the transformers config implies an unsupported CLIP: {e}") from None


def _hf_configs(folder: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None, dict]:
    """(text config, vision config, the whole config.json) of a transformers CLIP folder."""
    cfg = read_json(folder / "config.json")
    kind = cfg.get("model_type")
    if kind == "clip":
        return cfg.get("text_config") or {}, cfg.get("vision_config") or {}, cfg
    if kind == "clip_text_model":
        return cfg, None, cfg
    if kind == "clip_vision_model":
        return None, cfg, cfg
    raise CheckpointError(
        f"{folder / 'config.json'}: model_type {kind!r} is not a transformers CLIP "
        "(clip, clip_text_model or clip_vision_model)"
    )


def _preprocess(folder: Path) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        return None
    pre = read_json(file)
    mean, std = pre.get("image_mean"), pre.get("image_std")
    if not (isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3):
        return None
    return tuple(mean), tuple(std)


def _find_tokenizer(*folders: Path | None) -> Path | None:
    for f in folders:
        if f is None:
            continue
        for cand in (f, f.parent / "tokenizer"):
            if (cand / "tokenizer.json").is_file() or (cand / "vocab.json").is_file():
                return cand
    return None


def convert_hf_clip(
    src: str | Path,
    *,
    vision: str | Path | None = None,
    tokenizer: str | Path | TextTokenizer | None = None,
) -> tuple[CLIP, TextTokenizer]:
    """A transformers CLIP -> (tessera :class:`CLIP` in eval mode, its tokenizer).

    src: a ``CLIPModel`` folder, or a ``CLIPTextModelWithProjection`` folder (then ``vision``
      names a ``CLIPVisionModelWithProjection`` or ``CLIPModel`` folder for the image tower).
    tokenizer: a tokenizer folder, or None to look in ``src``, ``vision`` and a sibling
      ``tokenizer/`` folder (the diffusers pipeline layout)."""
    src = Path(src)
    text_cfg, vision_cfg, whole = _hf_configs(src)
    if text_cfg is None:
        raise CheckpointError(f"{src} holds no text tower (give the text encoder's folder)")
    sd = {k: v for k, v in read_state_dict(src).items()}
    vision_dir = Path(vision) if vision is not None else None
    if vision_cfg is None or vision_dir is not None:
        if vision_dir is None:
            raise CheckpointError(
                f"{src} holds only a text encoder: give an image tower (a "
                "CLIPVisionModelWithProjection or CLIPModel folder)"
            )
        _, vision_cfg, vwhole = _hf_configs(vision_dir)
        if vision_cfg is None:
            raise CheckpointError(f"{vision_dir} holds no image tower")
        vsd = read_state_dict(vision_dir)
        # the image tower only: a CLIPModel's text side must agree with src's, if present
        for k, v in vsd.items():
            if k.startswith(("vision_model.", "visual_projection.")):
                sd[k] = v
            elif k.startswith(("text_model.", "text_projection.")) and k in sd:
                if sd[k].shape != v.shape or not torch.equal(sd[k].float(), v.float()):
                    raise CheckpointError(
                        f"{vision_dir}: its text tower differs from {src}'s ({k!r}); "
                        "they are not one CLIP"
                    )
            elif k == "logit_scale":
                sd.setdefault(k, v)
        proj_v = int(vwhole.get("projection_dim") or vision_cfg.get("projection_dim") or 0)
    else:
        vision_dir = src
        proj_v = 0
    proj = int(whole.get("projection_dim") or text_cfg.get("projection_dim") or proj_v)
    if proj_v and proj_v != proj:
        raise CheckpointError(f"the towers project to different widths ({proj}, {proj_v})")
    if isinstance(tokenizer, TextTokenizer):
        tok = tokenizer
    else:
        tok_dir = Path(tokenizer) if tokenizer is not None else _find_tokenizer(src, vision_dir)
        if tok_dir is None:
            raise CheckpointError(
                f"no CLIP tokenizer beside {src} (vocab.json + merges.txt or tokenizer.json); "
                "pass the tokenizer folder"
            )
        tok = read_hf_tokenizer(tok_dir)
    stats = _preprocess(vision_dir) or _preprocess(src) or (OPENAI_MEAN, OPENAI_STD)
    cfg = config_from_hf(
        text_cfg,
        vision_cfg,
        projection_dim=proj,
        tokenizer=tok,
        image_mean=stats[0],  # type: ignore[arg-type]
        image_std=stats[1],  # type: ignore[arg-type]
        logit_scale_init=whole.get("logit_scale_init_value"),
    )
    state = _fuse_qkv(rename_state(sd, hf_clip_key, what=str(src), ignore=_hf_ignored))
    model = CLIP(cfg)
    state.setdefault("logit_scale", model.logit_scale.detach().clone())
    load_checked(model, state, what=f"transformers CLIP {src}", source_name=_hf_source_name)
    check_compatible(cfg, tok)
    return model.eval(), tok


# -- open_clip's layout --------------------------------------------------------------------------


def _open_clip_cfg(config: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if config is None:
        return {}
    data = dict(config) if isinstance(config, Mapping) else read_json(config)
    return dict(data.get("model_cfg", data)) | (
        {"preprocess_cfg": data["preprocess_cfg"]} if "preprocess_cfg" in data else {}
    )


def convert_open_clip(
    path: str | Path,
    *,
    tokenizer: str | Path | TextTokenizer,
    config: str | Path | Mapping[str, Any] | None = None,
    activation: str | None = None,
) -> tuple[CLIP, TextTokenizer]:
    """An open_clip ViT state dict (``.safetensors`` or weights-only) -> (:class:`CLIP`,
    tokenizer).

    config: open_clip's model config (``{"embed_dim", "quick_gelu", "vision_cfg",
      "text_cfg"}``, or an ``open_clip_config.json`` with ``model_cfg`` / ``preprocess_cfg``):
      heads, activation and image statistics. Without it heads are 64 channels wide (every
      released ViT) and ``activation`` must be given (``quick_gelu``: OpenAI's weights;
      ``gelu``: LAION's).
    tokenizer: an HF CLIP tokenizer folder, open_clip's ``bpe_simple_vocab_16e6.txt.gz``, or a
      :class:`TextTokenizer`."""
    path = Path(path)
    sd = read_state_dict(path)
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    sd.pop("attn_mask", None)  # open_clip's causal mask, when saved
    if "visual.proj" not in sd:
        raise CheckpointError(
            f"{path}: not an open_clip ViT state dict (no 'visual.proj'; first keys: "
            f"{named(list(sd)[:3])})"
        )
    oc = _open_clip_cfg(config)
    if activation is None and "quick_gelu" in oc:
        activation = "quick_gelu" if oc["quick_gelu"] else "gelu"
    if activation is None:
        raise CheckpointError(
            f"{path}: open_clip weights do not record their activation: pass "
            "activation='quick_gelu' (OpenAI's weights) or 'gelu' (LAION's), or the model's "
            "open_clip config"
        )
    _activation(activation, "activation")
    if isinstance(tokenizer, TextTokenizer):
        tok = tokenizer
    else:
        t = Path(tokenizer)
        tok = read_open_clip_tokenizer(t) if t.is_file() else read_hf_tokenizer(t)
    vision, text = oc.get("vision_cfg") or {}, oc.get("text_cfg") or {}
    vw = int(sd["visual.conv1.weight"].shape[0])
    tw = int(sd["ln_final.weight"].shape[0])
    overrides: dict[str, Any] = {
        "activation": activation,
        "vision_heads": int(vision.get("heads") or vw // int(vision.get("head_width", 64))),
        "text_heads": int(text.get("heads") or max(tw // 64, 1)),
        "mlp_ratio": _mlp_ratio(
            vw, int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0]), "visual"
        ),
        "eos_id": tok.eos_id,
        "bos_id": tok.bos_id,
    }
    pre = oc.get("preprocess_cfg") or {}
    if "mean" in pre and "std" in pre:
        overrides["image_mean"] = tuple(float(x) for x in pre["mean"])
        overrides["image_std"] = tuple(float(x) for x in pre["std"])
    vocab = int(sd["token_embedding.weight"].shape[0])
    if tok.eos_id != vocab - 1:
        raise CheckpointError(
            f"open_clip pools at the largest id, but the tokenizer's end-of-text id "
            f"{tok.eos_id} is not the vocabulary's last ({vocab - 1})"
        )
    from tessera.models.clip import config_from_openai_state_dict

    try:
        cfg = config_from_openai_state_dict(sd, **overrides)
    except ConfigError as e:
        raise CheckpointError(f"{path}: the weights imply an unsupported CLIP: {e}") from None
    weights = {
        k: v for k, v in sd.items() if k not in ("input_resolution", "context_length", "vocab_size")
    }
    model = CLIP(cfg)
    load_checked(model, weights, what=f"open_clip state dict {path}")
    check_compatible(cfg, tok)
    return model.eval(), tok


def save_clip(
    out: str | Path, model: CLIP, tokenizer: TextTokenizer, *, source: str, overwrite: bool = False
) -> Path:
    """Write the tessera CLIP checkpoint (``config.json`` + ``model.safetensors`` + its
    tokenizer)."""
    from tessera import checkpoint

    return checkpoint.save(
        out,
        config=model.config,
        model=model,
        tokenizer=tokenizer,
        metadata={"source": source},
        overwrite=overwrite,
    )

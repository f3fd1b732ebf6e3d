"""kakaobrain's Karlo (unCLIP) in diffusers' folder layout -> a tessera unCLIP pipeline folder.

A diffusers ``UnCLIPPipeline`` folder (``model_index.json``) holds ``prior``
(``PriorTransformer``), ``decoder`` (``UNet2DConditionModel``) with ``text_proj``
(``UnCLIPTextProjModel``), ``super_res_first`` / ``super_res_last`` (``UNet2DModel``),
``text_encoder`` (``CLIPTextModelWithProjection``), ``tokenizer`` and three ``UnCLIPScheduler``
configs. Karlo ships no image tower: the CLIP it was trained with (OpenAI's ViT-L/14, a
transformers ``CLIPModel`` or ``CLIPVisionModelWithProjection`` folder) completes tessera's
CLIP, which reranks and embeds images for variations.

Where Karlo departs from the paper, tessera's configs say so (the paper stays the default):

- decoder: ``text_encoder="clip"`` (CLIP's text hidden states instead of a GLIDE text
  encoder; its z_t added to the timestep embedding), ``clip_input="raw"`` (z_i unnormalised);
- prior: ``text_encoder="clip"``, ``embedding_space="standardized"`` (CLIP statistics);
- upsampler: ``last_unet`` (the final step's own network, ``super_res_last``) and
  ``low_res_resize="bicubic_antialias"``.

Every diffusers config key that changes the computation is checked against what tessera
implements; weights are mapped name by name and checked (one line names what is unknown,
missing or mis-shaped). Only safetensors or weights-only files are read.

**Sampling, difference of method.** diffusers samples all three stages with
``UnCLIPScheduler`` (ancestral DDPM over Karlo's respaced steps: the same timesteps as
tessera's ``N``-step respacing). tessera samples the decoder the same way (``decoder_sampler
= "ddpm"``, learned variance) but the prior and the upsamplers with DDIM (η = 0); the folder's
defaults are Karlo's step counts and guidance (prior 25 steps at 4.0, decoder 25 at 8.0,
upsampler 7, one prior sample).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from tessera.config.decoder import DecoderConfig
from tessera.config.diffusion import DiffusionConfig
from tessera.config.prior import PriorConfig
from tessera.config.unet import UNetConfig
from tessera.config.upsampler import UpsamplerConfig
from tessera.convert.clip import convert_hf_clip
from tessera.convert.weights import load_checked, named, read_json, read_state_dict
from tessera.errors import CheckpointError, ConfigError
from tessera.models.clip import CLIP, text_tower_state
from tessera.models.decoder import Decoder
from tessera.models.prior import DiffusionPrior
from tessera.models.upsampler import Upsampler
from tessera.text import TextTokenizer

__all__ = [
    "KARLO_DEFAULTS",
    "KarloComponents",
    "convert_karlo",
    "decoder_from_diffusers",
    "diffusion_from_scheduler",
    "load_karlo",
    "prior_from_diffusers",
    "unet_config",
    "unet_state",
    "upsampler_from_diffusers",
]

# Karlo's sampling as diffusers' UnCLIPPipeline defaults it (one prior sample: Karlo draws one)
KARLO_DEFAULTS: dict[str, Any] = {
    "prior_steps": 25,
    "prior_guidance": 4.0,
    "prior_candidates": 1,
    "decoder_sampler": "ddpm",
    "decoder_steps": 25,
    "decoder_guidance": 8.0,
    "upsampler_steps": 7,
}


def _require(cfg: Mapping[str, Any], where: str, **want: Any) -> None:
    """Every present key of ``want`` must have the value tessera implements."""
    for key, value in want.items():
        if (
            key in cfg
            and cfg[key] != value
            and not (isinstance(value, tuple) and cfg[key] in value)
        ):
            raise CheckpointError(
                f"{where}: {key}={cfg[key]!r} is not supported (tessera implements {value!r})"
            )


# -- schedulers --------------------------------------------------------------------------------


def diffusion_from_scheduler(sched: Mapping[str, Any], where: str) -> DiffusionConfig:
    """An ``UnCLIPScheduler`` config -> tessera's :class:`DiffusionConfig` (the same cosine
    schedule, prediction, variance and x0 clamp)."""
    if sched.get("_class_name", "UnCLIPScheduler") != "UnCLIPScheduler":
        raise CheckpointError(f"{where}: {sched.get('_class_name')} is not an UnCLIPScheduler")
    _require(sched, where, beta_schedule="squaredcos_cap_v2")
    prediction = {"epsilon": "eps", "sample": "x0"}.get(sched.get("prediction_type", "epsilon"))
    variance = {"fixed_small_log": "fixed_small", "learned_range": "learned_range"}.get(
        sched.get("variance_type", "fixed_small_log")
    )
    if prediction is None or variance is None:
        raise CheckpointError(
            f"{where}: prediction_type {sched.get('prediction_type')!r} / variance_type "
            f"{sched.get('variance_type')!r} are not supported"
        )
    clip = float(sched.get("clip_sample_range", 1.0)) if sched.get("clip_sample", True) else 0.0
    return DiffusionConfig(
        schedule="cosine",
        steps=int(sched.get("num_train_timesteps", 1000)),
        prediction=prediction,  # type: ignore[arg-type]
        variance=variance,  # type: ignore[arg-type]
        clip_x0=clip,
    )


# -- UNets -------------------------------------------------------------------------------------

_UNET_REQUIRED: dict[str, Any] = {
    "act_fn": "silu",
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "norm_eps": 1e-5,
    "mid_block_scale_factor": 1,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "encoder_hid_dim": None,
    "addition_embed_type": None,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "cross_attention_norm": None,
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": (None, False),
    "num_class_embeds": None,
}
_DOWN = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}
_UP = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}


def unet_config(
    cfg: Mapping[str, Any], where: str, *, sample_size: int | None = None, **extra: Any
) -> UNetConfig:
    """A diffusers ``UNet2DConditionModel`` / ``UNet2DModel`` config of Karlo's kind (ADM
    resnets with scale-shift norm, resampling resnets, GLIDE-style attention over pixels plus
    extra key/value tokens) -> :class:`UNetConfig`. ``extra`` sets tessera-only fields."""
    _require(cfg, where, **_UNET_REQUIRED)
    chans = [int(c) for c in cfg["block_out_channels"]]
    mc = chans[0]
    if any(c % mc for c in chans):
        raise CheckpointError(f"{where}: block_out_channels {chans} are not multiples of {mc}")
    down = list(cfg["down_block_types"])
    up = list(cfg["up_block_types"])
    bad = [b for b in down if b not in _DOWN] + [b for b in up if b not in _UP]
    if bad:
        raise CheckpointError(f"{where}: block type {bad[0]!r} is not supported")
    attn = [_DOWN[b] for b in down]
    if [_UP[b] for b in reversed(up)] != attn or len(up) != len(down) != len(chans):
        raise CheckpointError(f"{where}: the up blocks do not mirror the down blocks")
    layers = cfg.get("layers_per_block", 2)
    if not isinstance(layers, int):
        raise CheckpointError(f"{where}: per-level layers_per_block {layers!r} not supported")
    size = cfg.get("sample_size") or sample_size  # Karlo's super_res_last leaves it unset
    if not isinstance(size, int):
        raise CheckpointError(f"{where}: no sample_size")
    shift = cfg.get("resnet_time_scale_shift", "default")
    if shift not in ("scale_shift", "default"):
        raise CheckpointError(f"{where}: resnet_time_scale_shift={shift!r} is not supported")
    sides = tuple(size // 2**i for i, a in enumerate(attn) if a)
    mid = cfg.get("mid_block_type", "UNetMidBlock2D")
    if mid == "UNetMidBlock2DSimpleCrossAttn":  # UNet2DConditionModel
        mid_attn = True
    elif mid == "UNetMidBlock2D":  # UNet2DModel
        mid_attn = bool(cfg.get("add_attention", True))
    else:
        raise CheckpointError(f"{where}: mid_block_type {mid!r} is not supported")
    if bool(sides) != bool(mid_attn):
        raise CheckpointError(
            f"{where}: attention in the middle block only, or only outside it, is not supported"
        )
    head = cfg.get("attention_head_dim")
    if sides and not isinstance(head, int):
        raise CheckpointError(f"{where}: attention_head_dim {head!r} must be one integer")
    if cfg.get("num_attention_heads") is not None:
        raise CheckpointError(f"{where}: num_attention_heads is not supported")
    try:
        return UNetConfig(
            image_size=size,
            model_channels=mc,
            channel_mult=tuple(c // mc for c in chans),
            num_res_blocks=layers,
            attention_resolutions=sides,
            num_head_channels=int(head) if sides else 64,
            dropout=float(cfg.get("dropout", 0.0)),
            context_dim=int(cfg.get("cross_attention_dim") or 0) if sides else 0,
            num_groups=int(cfg.get("norm_num_groups", 32)),
            resblock_updown=True,
            scale_shift_norm=shift == "scale_shift",
            **extra,
        )
    except ConfigError as e:
        raise CheckpointError(f"{where}: unsupported UNet: {e}") from None


_RESNET = {
    "norm1": "in_norm",
    "conv1": "in_conv",
    "time_emb_proj": "emb",
    "norm2": "out_norm",
    "conv2": "out_conv",
    "conv_shortcut": "skip",
}
_ATTN = {"group_norm": "norm", "to_out.0": "proj"}
_FUSED = {"to_q": ("qkv", 0), "to_k": ("qkv", 1), "to_v": ("qkv", 2)}
_FUSED_CTX = {"add_k_proj": ("context_kv", 0), "add_v_proj": ("context_kv", 1)}


def _unet_key(key: str, cfg: UNetConfig) -> tuple[str, int | None] | None:
    """diffusers UNet name -> (tessera ``unet.`` name, part index of a fused projection)."""
    n = cfg.num_res_blocks
    flat = {
        "conv_in": "input_conv",
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    stem, _, tail = key.rpartition(".")
    if stem in flat:
        return f"{flat[stem]}.{tail}", None
    m = re.match(
        r"^(down_blocks|up_blocks)\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)$",
        key,
    )
    m2 = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.+)$", key)
    if m:
        level, kind, j, rest = int(m[2]), m[3], int(m[4]), m[5]
        if m[1] == "down_blocks":
            idx = level * (n + 1) + (n if kind == "downsamplers" else j)
            where = f"down.{idx}"
        else:
            idx = level * (n + 2) + (n + 1 if kind == "upsamplers" else j)
            where = f"up.{idx}"
        part = "attn" if kind == "attentions" else "res"
    elif m2:
        kind, j, rest = m2[1], int(m2[2]), m2[3]
        where, part = f"middle.{j}", "attn" if kind == "attentions" else "res"
    else:
        return None
    name, _, param = rest.rpartition(".")
    if part == "res":
        return (f"{where}.res.{_RESNET[name]}.{param}", None) if name in _RESNET else None
    if name in _ATTN:
        return f"{where}.attn.{_ATTN[name]}.{param}", None
    fused = _FUSED.get(name) or _FUSED_CTX.get(name)
    if fused is None:
        return None
    return f"{where}.attn.{fused[0]}.{param}", fused[1]


def unet_state(
    sd: Mapping[str, torch.Tensor], cfg: UNetConfig, *, what: str, prefix: str = "unet."
) -> dict[str, torch.Tensor]:
    """A diffusers UNet state dict in tessera's names (``prefix`` + :class:`UNet`'s), with
    q/k/v and the extra tokens' k/v fused; unknown keys are one line."""
    out: dict[str, torch.Tensor] = {}
    parts: dict[str, dict[int, torch.Tensor]] = {}
    unknown = []
    for k, v in sd.items():
        mapped = _unet_key(k, cfg)
        if mapped is None:
            unknown.append(k)
            continue
        name, part = mapped
        if part is None:
            out[prefix + name] = v
        else:
            parts.setdefault(prefix + name, {})[part] = v
    if unknown:
        raise CheckpointError(f"{what}: {len(unknown)} unknown key(s): {named(unknown)}")
    for name, got in parts.items():
        count = 3 if ".qkv." in name else 2
        if sorted(got) != list(range(count)):
            raise CheckpointError(f"{what}: {name} lacks some of its q/k/v projections")
        out[name] = torch.cat([got[i] for i in range(count)], dim=0)
    return out


# -- components ------------------------------------------------------------------------------


def decoder_from_diffusers(
    unet_cfg: Mapping[str, Any],
    unet_sd: Mapping[str, torch.Tensor],
    proj_cfg: Mapping[str, Any],
    proj_sd: Mapping[str, torch.Tensor],
    sched: Mapping[str, Any],
    clip: CLIP,
    *,
    where: str = "decoder",
) -> Decoder:
    """Karlo's decoder: ``UNet2DConditionModel`` + ``UnCLIPTextProjModel`` (+ the CLIP whose
    text tower it reads) -> :class:`Decoder` with ``text_encoder="clip"``."""
    _require(unet_cfg, where, class_embed_type="identity", in_channels=3)
    diffusion = diffusion_from_scheduler(sched, f"{where} scheduler")
    unet = unet_config(unet_cfg, where, out_channels=int(unet_cfg.get("out_channels", 6)))
    tokens = int(proj_cfg.get("clip_extra_context_tokens", 4))
    ct = clip.config
    clip_dim = int(proj_cfg.get("clip_embeddings_dim", ct.embed_dim))
    if int(proj_cfg.get("time_embed_dim", unet.time_embed_dim)) != unet.time_embed_dim:
        raise CheckpointError(f"{where}: text_proj's time_embed_dim does not match the UNet")
    if int(proj_cfg.get("cross_attention_dim", unet.context_dim)) != unet.context_dim:
        raise CheckpointError(f"{where}: text_proj's cross_attention_dim does not match")
    try:
        cfg = DecoderConfig(
            unet=unet,
            diffusion=diffusion,
            clip_dim=clip_dim,
            clip_tokens=tokens,
            vocab_size=ct.vocab_size,
            text_length=ct.context_length,
            text_layers=0,
            text_dropout=0.3,
            text_encoder="clip",
            clip_text=ct,
            clip_input="raw",
        )
    except ConfigError as e:
        raise CheckpointError(f"{where}: unsupported decoder: {e}") from None
    state = unet_state(unet_sd, unet, what=where)
    proj = dict(proj_sd)
    names = {
        "learned_classifier_free_guidance_embeddings": "null_clip",
        "embedding_proj.weight": "text_to_time.weight",
        "embedding_proj.bias": "text_to_time.bias",
        "clip_image_embeddings_project_to_time_embeddings.weight": "clip_to_time.weight",
        "clip_image_embeddings_project_to_time_embeddings.bias": "clip_to_time.bias",
        "encoder_hidden_states_proj.weight": "text_to_context.weight",
        "encoder_hidden_states_proj.bias": "text_to_context.bias",
        "text_encoder_hidden_states_norm.weight": "text_norm.weight",
        "text_encoder_hidden_states_norm.bias": "text_norm.bias",
    }
    unknown = [
        k for k in proj if k not in names and not k.startswith("clip_extra_context_tokens_proj.")
    ]
    if unknown:
        raise CheckpointError(f"{where} text_proj: unknown key(s): {named(unknown)}")
    for k, v in proj.items():
        if k in names:
            state[names[k]] = v
    ctx = unet.context_dim
    for param in ("weight", "bias"):
        key = f"clip_extra_context_tokens_proj.{param}"
        if key in proj:
            # diffusers reads token j's channel c at output c * tokens + j (a reshape to
            # (ctx, tokens) then a transpose); tessera at j * ctx + c
            v = proj[key]
            v = v.reshape(ctx, tokens, *v.shape[1:]).transpose(0, 1).reshape(v.shape)
            state[f"clip_to_tokens.{param}"] = v
    state.update({f"text.{k}": v for k, v in text_tower_state(clip).items()})
    model = Decoder(cfg)
    load_checked(model, state, what=f"Karlo {where}")
    return model.eval()


_PRIOR_REQUIRED: dict[str, Any] = {
    "additional_embeddings": 4,
    "time_embed_act_fn": "silu",
    "norm_in_type": None,
    "embedding_proj_norm_type": None,
    "encoder_hid_proj_type": "linear",
    "added_emb_type": "prd",
}
_PRIOR_FLAT = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "proj_in": "noisy_proj",
    "embedding_proj": "text_embed_proj",
    "encoder_hidden_states_proj": "text_hidden_proj",
    "norm_out": "ln_out",
    "proj_to_clip_embeddings": "out_proj",
}
_PRIOR_BLOCK = {
    "norm1": "ln_1",
    "attn1.to_out.0": "attn.out_proj",
    "norm3": "ln_2",
    "ff.net.0.proj": "mlp.c_fc",
    "ff.net.2": "mlp.c_proj",
}


def prior_from_diffusers(
    cfg: Mapping[str, Any],
    sd: Mapping[str, torch.Tensor],
    sched: Mapping[str, Any],
    clip: CLIP,
    *,
    where: str = "prior",
) -> DiffusionPrior:
    """Karlo's ``PriorTransformer`` (+ the CLIP whose text tower it reads) ->
    :class:`DiffusionPrior` with ``text_encoder="clip"``, ``embedding_space="standardized"``."""
    _require(cfg, where, **_PRIOR_REQUIRED)
    heads, head_dim = (
        int(cfg.get("num_attention_heads", 32)),
        int(cfg.get("attention_head_dim", 64)),
    )
    width, dim = heads * head_dim, int(cfg.get("embedding_dim", 768))
    for key in ("time_embed_dim",):
        if cfg.get(key) not in (None, width):
            raise CheckpointError(f"{where}: {key}={cfg[key]} is not supported ({width})")
    for key in ("embedding_proj_dim", "clip_embed_dim"):
        if cfg.get(key) not in (None, dim):
            raise CheckpointError(f"{where}: {key}={cfg[key]} is not supported ({dim})")
    ct = clip.config
    length = int(cfg.get("num_embeddings", 77))
    try:
        pcfg = PriorConfig(
            clip_dim=dim,
            vocab_size=ct.vocab_size,
            text_length=length,
            width=width,
            layers=int(cfg.get("num_layers", 20)),
            heads=heads,
            diffusion=diffusion_from_scheduler(sched, f"{where} scheduler"),
            text_encoder="clip",
            clip_text=ct,
            embedding_space="standardized",
        )
    except ConfigError as e:
        raise CheckpointError(f"{where}: unsupported prior: {e}") from None
    state: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[int, torch.Tensor]] = {}
    unknown = []
    for k, v in sd.items():
        stem, _, param = k.rpartition(".")
        m = re.match(r"^transformer_blocks\.(\d+)\.(.+)$", stem)
        if stem in _PRIOR_FLAT:
            state[f"{_PRIOR_FLAT[stem]}.{param}"] = v
        elif k == "positional_embedding":
            state["text_positional"] = v.reshape(-1, v.shape[-1])[:length]
            state["slot_embedding"] = v.reshape(-1, v.shape[-1])[length:]
        elif k == "prd_embedding":
            state["query"] = v.reshape(-1)
        elif k in ("clip_mean", "clip_std"):
            state[k] = v.reshape(-1)
        elif m and m[2] in _PRIOR_BLOCK:
            state[f"transformer.resblocks.{m[1]}.{_PRIOR_BLOCK[m[2]]}.{param}"] = v
        elif m and m[2] in ("attn1.to_q", "attn1.to_k", "attn1.to_v"):
            name = f"transformer.resblocks.{m[1]}.attn.in_proj_{param}"
            qkv.setdefault(name, {})["qkv".index(m[2][-1])] = v
        else:
            unknown.append(k)
    if unknown:
        raise CheckpointError(f"Karlo {where}: {len(unknown)} unknown key(s): {named(unknown)}")
    for name, got in qkv.items():
        if sorted(got) != [0, 1, 2]:
            raise CheckpointError(f"Karlo {where}: {name} lacks some of q, k, v")
        state[name] = torch.cat([got[0], got[1], got[2]], dim=0)
    state.update({f"text.{k}": v for k, v in text_tower_state(clip).items()})
    model = DiffusionPrior(pcfg)
    load_checked(model, state, what=f"Karlo {where}")
    return model.eval()


def upsampler_from_diffusers(
    first_cfg: Mapping[str, Any],
    first_sd: Mapping[str, torch.Tensor],
    last_cfg: Mapping[str, Any] | None,
    last_sd: Mapping[str, torch.Tensor] | None,
    sched: Mapping[str, Any],
    *,
    low_res_size: int,
    where: str = "super_res",
) -> Upsampler:
    """Karlo's ``super_res_first`` (+ ``super_res_last``) ``UNet2DModel`` pair ->
    :class:`Upsampler` (``last_unet``: the final step's network)."""

    def one(cfg: Mapping[str, Any], name: str, size: int | None = None) -> UNetConfig:
        _require(cfg, name, in_channels=6, out_channels=3, add_attention=False)
        if "add_attention" not in cfg:
            raise CheckpointError(
                f"{name}: a super-resolution UNet with attention is not supported"
            )
        return unet_config(
            cfg,
            name,
            sample_size=size,
            low_res_channels=3,
            low_res_resize="bicubic_antialias",
            out_channels=3,
        )

    first = one(first_cfg, f"{where}_first")
    last = one(last_cfg, f"{where}_last", first.image_size) if last_cfg is not None else None
    try:
        cfg = UpsamplerConfig(
            unet=first,
            diffusion=diffusion_from_scheduler(sched, f"{where} scheduler"),
            low_res_size=low_res_size,
            last_unet=last,
        )
    except ConfigError as e:
        raise CheckpointError(f"{where}: unsupported upsampler: {e}") from None
    state = unet_state(first_sd, first, what=f"{where}_first")
    if last is not None and last_sd is not None:
        state.update(unet_state(last_sd, last, what=f"{where}_last", prefix="unet_last."))
    model = Upsampler(cfg)
    load_checked(model, state, what=f"Karlo {where}")
    return model.eval()


# -- the folder --------------------------------------------------------------------------------


class KarloComponents:
    """The converted components of one Karlo folder (what :func:`convert_karlo` writes)."""

    def __init__(
        self,
        clip: CLIP,
        tokenizer: TextTokenizer,
        prior: DiffusionPrior,
        decoder: Decoder,
        upsampler: Upsampler,
    ) -> None:
        self.clip, self.tokenizer = clip, tokenizer
        self.prior, self.decoder, self.upsampler = prior, decoder, upsampler


def _component(src: Path, index: Mapping[str, Any], role: str, cls: str | tuple[str, ...]) -> Path:
    entry = index.get(role)
    want = (cls,) if isinstance(cls, str) else cls
    if not isinstance(entry, list) or len(entry) != 2 or entry[1] not in want:
        raise CheckpointError(
            f"{src / 'model_index.json'}: component {role!r} is {entry!r}, expected {want[0]}"
        )
    folder = src / role
    if not folder.is_dir():
        raise CheckpointError(f"{src}: missing component folder {role}/")
    return folder


def load_karlo(src: str | Path, *, clip: str | Path) -> KarloComponents:
    """Read and convert a diffusers Karlo folder; ``clip`` is the image tower's folder (a
    transformers ``CLIPModel`` or ``CLIPVisionModelWithProjection``: OpenAI's ViT-L/14)."""
    src = Path(src)
    index = read_json(src / "model_index.json")
    if index.get("_class_name") != "UnCLIPPipeline":
        raise CheckpointError(
            f"{src / 'model_index.json'}: {index.get('_class_name')!r} is not an UnCLIPPipeline"
        )
    roles = {
        "prior": "PriorTransformer",
        "decoder": "UNet2DConditionModel",
        "text_proj": "UnCLIPTextProjModel",
        "super_res_first": "UNet2DModel",
        "super_res_last": "UNet2DModel",
        "text_encoder": "CLIPTextModelWithProjection",
        "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
        "prior_scheduler": "UnCLIPScheduler",
        "decoder_scheduler": "UnCLIPScheduler",
        "super_res_scheduler": "UnCLIPScheduler",
    }
    dirs = {role: _component(src, index, role, cls) for role, cls in roles.items()}
    model, tok = convert_hf_clip(dirs["text_encoder"], vision=clip, tokenizer=dirs["tokenizer"])

    def cfg(role: str, name: str = "config.json") -> dict[str, Any]:
        return read_json(dirs[role] / name)

    def sched(role: str) -> dict[str, Any]:
        return cfg(role, "scheduler_config.json")

    prior = prior_from_diffusers(
        cfg("prior"), read_state_dict(dirs["prior"]), sched("prior_scheduler"), model
    )
    dec_cfg = cfg("decoder")
    decoder = decoder_from_diffusers(
        dec_cfg,
        read_state_dict(dirs["decoder"]),
        cfg("text_proj"),
        read_state_dict(dirs["text_proj"]),
        sched("decoder_scheduler"),
        model,
    )
    up = upsampler_from_diffusers(
        cfg("super_res_first"),
        read_state_dict(dirs["super_res_first"]),
        cfg("super_res_last"),
        read_state_dict(dirs["super_res_last"]),
        sched("super_res_scheduler"),
        low_res_size=int(dec_cfg["sample_size"]),
    )
    return KarloComponents(model, tok, prior, decoder, up)


def convert_karlo(
    src: str | Path,
    out: str | Path,
    *,
    clip: str | Path,
    dtype: str | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> Path:
    """Convert a diffusers Karlo folder into a tessera unCLIP pipeline folder ``out``
    (``dtype="float16"`` halves it on disk; ``defaults`` override :data:`KARLO_DEFAULTS`)."""
    from tessera.pipelines.unclip import save_unclip_pipeline

    parts = load_karlo(src, clip=clip)
    return save_unclip_pipeline(
        out,
        tokenizer=parts.tokenizer,
        clip=parts.clip,
        clip_tokenizer=parts.tokenizer,
        priors={"diffusion": parts.prior},
        decoder=parts.decoder,
        upsamplers=[parts.upsampler],
        defaults={**KARLO_DEFAULTS, **dict(defaults or {})},
        dtype=dtype,
    )

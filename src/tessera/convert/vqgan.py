"""VQGAN weights in taming-transformers' or diffusers' ``VQModel`` layout -> tessera's VQGAN.

tessera's :class:`~tessera.vae.vqgan.VQGAN` keeps taming's module names, so a taming state
dict (``VQModel`` / ``GumbelVQ``, e.g. ruDALL-E's ``vqgan.gumbelf8-sber``) loads after dropping
its training-only ``loss.*`` entries (the LPIPS network and the discriminator). A diffusers
``VQModel`` (``down_blocks.i.resnets.j`` ... ``to_q`` linear attention projections) is renamed
onto it: blocks re-indexed (diffusers' decoder runs ``up_blocks`` lowest resolution first,
taming's ``up`` is stored highest first), ``conv_shortcut`` -> ``nin_shortcut``, linear
attention projections -> 1x1 convolutions.

Only safetensors files and state dicts that ``torch.load(weights_only=True)`` accepts are read;
anything else is refused with a one-line error. The architecture is read off the tensor shapes;
what the tensors do not hold (the image size, GroupNorm's group count) comes from diffusers'
``config.json`` when there is one, else from the arguments (taming's defaults: 256 px, 32).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import torch

from tessera.config.vqgan import VQGANConfig
from tessera.convert.weights import read_state_dict
from tessera.errors import CheckpointError, ConfigError
from tessera.vae.vqgan import VQGAN

__all__ = [
    "config_from_taming",
    "diffusers_to_taming",
    "load_vqgan",
    "read_state_dict",
    "taming_state_dict",
]

_MAX_NAMED = 3


def _named(keys: list[str]) -> str:
    shown = ", ".join(repr(k) for k in keys[:_MAX_NAMED])
    return shown + (f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else "")


# -- diffusers -> taming names ---------------------------------------------------------------

_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    # diffusers' pre-0.14 attention names (AttentionBlock)
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}
_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
_TOP = {
    "quant_conv.weight",
    "quant_conv.bias",
    "post_quant_conv.weight",
    "post_quant_conv.bias",
    "quantize.embedding.weight",
}


def _split_param(rest: str, table: dict[str, str]) -> str | None:
    """``'to_out.0.weight'`` -> ``'proj_out.weight'`` through ``table``; None if unknown."""
    stem, _, tail = rest.rpartition(".")
    if stem in table and tail in ("weight", "bias"):
        return f"{table[stem]}.{tail}"
    return None


def diffusers_to_taming(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers ``VQModel`` state dict onto taming's names (tensors shared, linear
    attention weights viewed as 1x1 convolutions). Unknown keys: one-line CheckpointError."""
    n_up = 1 + max(
        (int(m[1]) for k in sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))), default=-1
    )
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, value in sd.items():
        new = _diffusers_name(key, n_up)
        if new is None:
            unknown.append(key)
            continue
        if new.rsplit(".", 2)[-2] in ("q", "k", "v", "proj_out") and value.ndim == 2:
            value = value[:, :, None, None]
        out[new] = value
    if unknown:
        raise CheckpointError(
            f"{len(unknown)} key(s) not in diffusers' VQModel layout: {_named(unknown)}"
        )
    return out


def _diffusers_name(key: str, n_up: int) -> str | None:
    if key in _TOP:
        return key
    m = re.match(r"(encoder|decoder)\.(.*)$", key)
    if m is None:
        return None
    half, rest = m[1], m[2]
    for a, b in (
        ("conv_in.", "conv_in."),
        ("conv_out.", "conv_out."),
        ("conv_norm_out.", "norm_out."),
    ):
        if rest.startswith(a) and rest[len(a) :] in ("weight", "bias"):
            return f"{half}.{b}{rest[len(a) :]}"
    m = re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", rest)
    if m:
        if m[1] == "resnets" and m[2] in ("0", "1"):
            p = _split_param(m[3], _RESNET)
            return None if p is None else f"{half}.mid.block_{int(m[2]) + 1}.{p}"
        if m[1] == "attentions" and m[2] == "0":
            p = _split_param(m[3], _ATTN)
            return None if p is None else f"{half}.mid.attn_1.{p}"
        return None
    blocks = "down_blocks" if half == "encoder" else "up_blocks"
    m = re.match(
        rf"{blocks}\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)$", rest
    )
    if m is None:
        return None
    level = int(m[1]) if half == "encoder" else n_up - 1 - int(m[1])
    prefix = f"{half}.{'down' if half == 'encoder' else 'up'}.{level}"
    kind, j, tail = m[2], m[3], m[4]
    if kind == "resnets":
        p = _split_param(tail, _RESNET)
        return None if p is None else f"{prefix}.block.{j}.{p}"
    if kind == "attentions":
        p = _split_param(tail, _ATTN)
        return None if p is None else f"{prefix}.attn.{j}.{p}"
    want = "downsamplers" if half == "encoder" else "upsamplers"
    if kind == want and j == "0" and tail in ("conv.weight", "conv.bias"):
        return f"{prefix}.{'downsample' if half == 'encoder' else 'upsample'}.{tail}"
    return None


# -- taming state dicts ----------------------------------------------------------------------


def taming_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A taming ``VQModel`` / ``GumbelVQ`` state dict without its training-only ``loss.*``
    entries (LPIPS and the discriminator), with a ``model.`` prefix (ruDALL-E's wrapper)
    removed."""
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("model.")
        if not k.startswith("loss."):
            out[k] = v
    return out


def _need(sd: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise CheckpointError(
            f"missing key {key!r} (first key is {next(iter(sd))!r}): not a taming/diffusers "
            "VQGAN state dict"
        )
    return sd[key]


def config_from_taming(
    sd: Mapping[str, torch.Tensor], *, image_size: int = 256, norm_groups: int = 32
) -> VQGANConfig:
    """The :class:`VQGANConfig` of a taming-named state dict, read off its shapes.

    ``image_size`` (taming ``resolution``) and ``norm_groups`` are not in the tensors; they
    place the attention levels and size GroupNorm (taming: 256 for the f8/f16 models, 32)."""
    conv_in = _need(sd, "encoder.conv_in.weight")
    ch, in_channels = int(conv_in.shape[0]), int(conv_in.shape[1])
    levels = 1 + max(int(m[1]) for k in sd if (m := re.match(r"encoder\.down\.(\d+)\.", k)))
    ch_mult, attn = [], []
    blocks = 1 + max(
        int(m[1]) for k in sd if (m := re.match(r"encoder\.down\.0\.block\.(\d+)\.", k))
    )
    for i in range(levels):
        width = int(_need(sd, f"encoder.down.{i}.block.0.conv1.weight").shape[0])
        if width % ch:
            raise CheckpointError(f"encoder level {i} is {width} wide, not a multiple of {ch}")
        ch_mult.append(width // ch)
        if f"encoder.down.{i}.attn.0.q.weight" in sd:
            attn.append(image_size // 2**i)
    quantizer = "gumbel" if "quantize.proj.weight" in sd else "nearest"
    book = _need(
        sd, "quantize.embed.weight" if quantizer == "gumbel" else "quantize.embedding.weight"
    )
    try:
        return VQGANConfig(
            image_size=image_size,
            in_channels=in_channels,
            out_channels=int(_need(sd, "decoder.conv_out.weight").shape[0]),
            ch=ch,
            ch_mult=tuple(ch_mult),
            num_res_blocks=blocks,
            attn_resolutions=tuple(attn),
            z_channels=int(_need(sd, "encoder.conv_out.weight").shape[0]),
            embed_dim=int(_need(sd, "quant_conv.weight").shape[0]),
            vocab_size=int(book.shape[0]),
            norm_groups=norm_groups,
            quantizer=quantizer,
        )
    except ConfigError as e:
        raise CheckpointError(f"the weights imply an unsupported VQGAN config: {e}") from None


def _check_keys(sd: Mapping[str, torch.Tensor], cfg: VQGANConfig, where: str) -> None:
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in VQGAN(cfg).state_dict().items()}
    unexpected = [k for k in sd if k not in expected]
    missing = [k for k in expected if k not in sd]
    bad = [k for k in sd if k in expected and tuple(sd[k].shape) != expected[k]]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unknown key(s): {_named(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_named(missing)}")
    if bad:
        k = bad[0]
        problems.append(
            f"{len(bad)} shape mismatch(es), e.g. {k!r}: {tuple(sd[k].shape)} vs {expected[k]}"
        )
    if problems:
        raise CheckpointError(f"{where} does not match a VQGAN: " + "; ".join(problems))


def build_vqgan(sd: Mapping[str, torch.Tensor], cfg: VQGANConfig, where: str) -> VQGAN:
    """A :class:`VQGAN` of ``cfg`` holding the taming-named ``sd`` (checked), in eval mode."""
    _check_keys(sd, cfg, where)
    model = VQGAN(cfg)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()


def load_vqgan(
    path: str | Path, *, image_size: int | None = None, norm_groups: int | None = None
) -> VQGAN:
    """Load a VQGAN from ``path``: a diffusers ``VQModel`` folder (``config.json`` +
    ``diffusion_pytorch_model.safetensors``) or a taming state dict file (``.safetensors`` or
    a weights-only ``.ckpt`` / ``.pt``). ``image_size`` / ``norm_groups`` override what the
    folder's config says (default for taming files: 256 and 32)."""
    path = Path(path)
    if path.is_dir():
        cfg_file = path / "config.json"
        try:
            dcfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"cannot read diffusers config {cfg_file}: {e}") from None
        if dcfg.get("_class_name", "VQModel") != "VQModel":
            raise CheckpointError(f"{cfg_file}: a {dcfg.get('_class_name')!r}, not a VQModel")
        for key, ok in (("act_fn", "silu"), ("norm_type", "group")):
            if dcfg.get(key, ok) != ok:
                raise CheckpointError(
                    f"{cfg_file}: {key} {dcfg[key]!r} is not supported ({ok} only)"
                )
        files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
        if not files:
            raise CheckpointError(f"{path}: no .safetensors (or .bin) weights file")
        sd = diffusers_to_taming(read_state_dict(files[0], "VQModel weights"))
        cfg = config_from_taming(
            sd,
            image_size=image_size or int(dcfg.get("sample_size", 256)),
            norm_groups=norm_groups or int(dcfg.get("norm_num_groups", 32)),
        )
        return build_vqgan(sd, cfg, str(files[0]))
    sd = taming_state_dict(read_state_dict(path, "VQGAN weights"))
    cfg = config_from_taming(sd, image_size=image_size or 256, norm_groups=norm_groups or 32)
    return build_vqgan(sd, cfg, str(path))

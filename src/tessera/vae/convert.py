"""Load the weights of OpenAI's released dVAE (the ``dall-e`` package) into tessera.

The ``dall-e`` package's ``Encoder`` / ``Decoder`` and tessera's :class:`~tessera.vae.model.Encoder`
/ :class:`~tessera.vae.model.Decoder` have the same module tree (``blocks.group_1.block_1.
res_path.conv_1`` ...); only the parameter names differ (``w`` / ``b`` vs ``weight`` /
``bias``) and tessera keeps both halves in one :class:`~tessera.vae.model.DiscreteVAE`
(``encoder.`` / ``decoder.`` prefixes). Everything the architecture needs (width, blocks per
group, group count, codebook size, decoder input width) is read off the tensor shapes.

OpenAI released ``encoder.pkl`` / ``decoder.pkl`` as *pickled whole modules*: loading one runs
arbitrary code, so tessera never unpickles them. It reads only

* ``.safetensors`` files, or
* state-dict files that ``torch.load(..., weights_only=True)`` accepts (tensors only).

A user who has the ``.pkl`` files converts them once, in an environment they trust that has the
``dall-e`` package installed (the command is printed by :func:`read_openai_weights` when it is
handed a pickled module)::

    python -c "import torch; from safetensors.torch import save_file; \\
        m = torch.load('encoder.pkl', map_location='cpu', weights_only=False); \\
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, 'encoder.safetensors')"

and the same for ``decoder.pkl``; then ``load_openai('encoder.safetensors',
'decoder.safetensors')`` (or ``tessera vae convert-openai``) builds the model.
"""

from __future__ import annotations

import functools
import pickle
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tessera.config.vae import VAEConfig
from tessera.errors import CheckpointError, ConfigError, UnsafeCheckpointError
from tessera.vae.model import DiscreteVAE

__all__ = [
    "config_from_openai",
    "convert_openai_state_dicts",
    "load_openai",
    "pkl_conversion_command",
    "read_openai_weights",
]

_BLOCK_KEY = re.compile(r"^blocks\.group_(\d+)\.block_(\d+)\.")
_RENAME = {"w": "weight", "b": "bias"}
_MAX_NAMED = 3


def pkl_conversion_command(path: str | Path) -> str:
    """The one-line, run-it-yourself command that turns a pickled ``dall-e`` module file
    (OpenAI's ``encoder.pkl`` / ``decoder.pkl``) into a ``.safetensors`` state dict."""
    src = str(path)
    dst = str(Path(path).with_suffix(".safetensors"))
    return (
        'python -c "import torch; from safetensors.torch import save_file; '
        f"m = torch.load({src!r}, map_location='cpu', weights_only=False); "
        f'save_file({{k: v.contiguous() for k, v in m.state_dict().items()}}, {dst!r})"'
    )


def _as_state_dict(obj: Any, what: str) -> dict[str, torch.Tensor]:
    """A ``dall-e`` module or its state dict -> ``{name: tensor}`` (checked)."""
    if isinstance(obj, nn.Module):
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{what}: expected a state dict, got {type(obj).__name__}")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{what}: {len(bad)} non-tensor entries, e.g. {bad[0]!r}; "
            "expected the state dict of a dall-e Encoder/Decoder"
        )
    if not obj:
        raise CheckpointError(f"{what}: the state dict is empty")
    return dict(obj)


def _need(sd: Mapping[str, torch.Tensor], key: str, what: str, ndim: int) -> torch.Tensor:
    if key not in sd:
        example = next(iter(sd))
        raise CheckpointError(
            f"{what}: missing key {key!r} (first key is {example!r}); expected the state dict "
            "of a dall-e Encoder/Decoder with keys like 'blocks.input.w'"
        )
    t = sd[key]
    if t.ndim != ndim:
        raise CheckpointError(f"{what}: {key!r} has shape {tuple(t.shape)}, expected {ndim}-d")
    return t


def _layout(sd: Mapping[str, torch.Tensor], what: str) -> tuple[int, int]:
    """(group_count, n_blk_per_group) from the ``blocks.group_G.block_B.`` keys."""
    blocks: dict[int, set[int]] = {}
    for k in sd:
        m = _BLOCK_KEY.match(k)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if not blocks:
        raise CheckpointError(f"{what}: no 'blocks.group_G.block_B.*' keys: not a dall-e model")
    groups = sorted(blocks)
    if groups != list(range(1, len(groups) + 1)):
        raise CheckpointError(f"{what}: residual groups are not numbered 1..N: {groups}")
    counts = {len(b) for b in blocks.values()}
    if len(counts) != 1 or any(sorted(b) != list(range(1, len(b) + 1)) for b in blocks.values()):
        per = {f"group_{g}": sorted(blocks[g]) for g in groups}
        raise CheckpointError(f"{what}: groups have different or non-contiguous blocks: {per}")
    return len(groups), counts.pop()


def config_from_openai(encoder_sd: Any, decoder_sd: Any, *, image_size: int = 256) -> VAEConfig:
    """Infer the :class:`VAEConfig` of a ``dall-e`` Encoder/Decoder pair from its tensors.

    Reads ``n_hid``, ``n_blk_per_group``, ``group_count``, ``vocab_size``, ``n_init`` and the
    channel count off the shapes and checks that the two halves agree. ``image_size`` is not
    stored in the weights (OpenAI's model was trained at 256); the training schedules keep
    their defaults (change them with ``cfg.replace(...)``).
    """
    enc = _as_state_dict(encoder_sd, "encoder")
    dec = _as_state_dict(decoder_sd, "decoder")
    e_in = _need(enc, "blocks.input.w", "encoder", 4)
    e_out = _need(enc, "blocks.output.conv.w", "encoder", 4)
    d_in = _need(dec, "blocks.input.w", "decoder", 4)
    d_out = _need(dec, "blocks.output.conv.w", "decoder", 4)
    if e_in.shape[-1] != 7 or d_in.shape[-1] != 1:
        raise CheckpointError(
            f"'blocks.input.w' has a {e_in.shape[-1]}x{e_in.shape[-1]} kernel in the encoder and "
            f"{d_in.shape[-1]}x{d_in.shape[-1]} in the decoder (dall-e: 7x7 and 1x1); "
            "are the encoder and decoder files swapped?"
        )
    n_hid, channels = int(e_in.shape[0]), int(e_in.shape[1])
    vocab, n_init = int(e_out.shape[0]), int(d_in.shape[0])
    e_layout, d_layout = _layout(enc, "encoder"), _layout(dec, "decoder")
    checks = {
        "vocab_size": (vocab, int(d_in.shape[1])),
        "n_hid": (n_hid, int(d_out.shape[1])),
        "channels": (channels, int(d_out.shape[0]) // 2),
        "(group_count, n_blk_per_group)": (e_layout, d_layout),
    }
    for name, (a, b) in checks.items():
        if a != b:
            raise CheckpointError(
                f"encoder and decoder disagree on {name}: {a} vs {b}; "
                "they are not the two halves of one dVAE"
            )
    if d_out.shape[0] != 2 * channels:
        raise CheckpointError(
            f"decoder emits {d_out.shape[0]} channels; a logit-Laplace decoder emits 2 x {channels}"
        )
    try:
        return VAEConfig(
            image_size=image_size,
            n_hid=n_hid,
            n_blk_per_group=e_layout[1],
            group_count=e_layout[0],
            vocab_size=vocab,
            n_init=n_init,
            input_channels=channels,
        )
    except ConfigError as e:
        raise CheckpointError(f"the weights imply an unsupported config: {e}") from None


@functools.lru_cache(maxsize=8)
def _expected_shapes(cfg: VAEConfig) -> dict[str, tuple[int, ...]]:
    """tessera's state-dict names and shapes for ``cfg`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        model = DiscreteVAE(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _openai_name(key: str) -> str:
    """``encoder.blocks.x.weight`` -> ``encoder: blocks.x.w`` (how the user's file names it)."""
    half, rest = key.split(".", 1)
    stem, _, tail = rest.rpartition(".")
    short = {v: k for k, v in _RENAME.items()}.get(tail, tail)
    return f"{half}: {stem}.{short}"


def _examples(keys: list[str]) -> str:
    shown = ", ".join(repr(_openai_name(k)) for k in keys[:_MAX_NAMED])
    return shown + (f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else "")


def convert_openai_state_dicts(
    encoder_sd: Any, decoder_sd: Any, *, config: VAEConfig | None = None
) -> dict[str, torch.Tensor]:
    """Map ``dall-e`` Encoder + Decoder state dicts onto :class:`DiscreteVAE`'s state dict.

    ``blocks.<path>.w`` / ``.b`` become ``encoder.blocks.<path>.weight`` / ``.bias`` (and
    ``decoder.`` for the decoder). The result is checked against the model that ``config``
    (default: :func:`config_from_openai`) builds: unexpected, missing or mis-shaped entries
    raise :class:`CheckpointError` naming them as the input names them. Tensors are shared with
    the inputs, not copied; load them with ``model.load_state_dict(result, strict=True)``.
    """
    enc = _as_state_dict(encoder_sd, "encoder")
    dec = _as_state_dict(decoder_sd, "decoder")
    cfg = config if config is not None else config_from_openai(enc, dec)
    out: dict[str, torch.Tensor] = {}
    malformed: list[str] = []
    for half, sd in (("encoder", enc), ("decoder", dec)):
        for key, value in sd.items():
            stem, _, tail = key.rpartition(".")
            if not key.startswith("blocks.") or tail not in _RENAME:
                malformed.append(f"{half}: {key}")
                continue
            out[f"{half}.{stem}.{_RENAME[tail]}"] = value
    if malformed:
        raise CheckpointError(
            f"{len(malformed)} unexpected key(s) not named like the dall-e package's "
            f"'blocks.<path>.w' / '.b': "
            + ", ".join(repr(k) for k in malformed[:_MAX_NAMED])
            + (f" (+{len(malformed) - _MAX_NAMED} more)" if len(malformed) > _MAX_NAMED else "")
        )
    expected = _expected_shapes(cfg)
    unexpected = [k for k in out if k not in expected]
    missing = [k for k in expected if k not in out]
    mismatched = [k for k in out if k in expected and tuple(out[k].shape) != expected[k]]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_examples(unexpected)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_examples(missing)}")
    if mismatched:
        k = mismatched[0]
        problems.append(
            f"{len(mismatched)} shape mismatch(es), e.g. {_openai_name(k)!r}: "
            f"{tuple(out[k].shape)} vs {expected[k]} expected"
        )
    if problems:
        arch = (
            f"n_hid={cfg.n_hid}, n_blk_per_group={cfg.n_blk_per_group}, "
            f"group_count={cfg.group_count}, vocab_size={cfg.vocab_size}, n_init={cfg.n_init}"
        )
        raise CheckpointError(
            f"the dall-e weights do not match the dVAE ({arch}): " + "; ".join(problems)
        )
    return out


def read_openai_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read one ``dall-e`` state dict: ``.safetensors``, or a weights-only ``torch.load`` file.

    Pickled modules (OpenAI's ``encoder.pkl`` / ``decoder.pkl``) are refused with an
    :class:`UnsafeCheckpointError` whose message holds the one-time conversion command.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"corrupt or truncated safetensors file {path}: {e}") from None
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UnsafeCheckpointError(
                f"{path} holds pickled Python objects, not just tensors (OpenAI's released "
                "encoder.pkl/decoder.pkl are whole pickled modules); tessera never unpickles "
                "them. Convert it once, in an environment you trust with the dall-e package "
                f"installed: {pkl_conversion_command(path)} -- then pass the .safetensors file"
            ) from None
        except (RuntimeError, OSError, EOFError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot read {path} as a state dict: {first}") from None
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            obj = obj["state_dict"]
    return _as_state_dict(obj, str(path))


def load_openai(
    encoder_path: str | Path, decoder_path: str | Path, *, image_size: int = 256
) -> DiscreteVAE:
    """Build a :class:`DiscreteVAE` (in eval mode) from ``dall-e`` Encoder/Decoder weights.

    Each path is a ``.safetensors`` file or a tensors-only ``torch.save``d state dict; the
    architecture is inferred (:func:`config_from_openai`). See the module docstring for
    OpenAI's pickled ``.pkl`` files.
    """
    enc = read_openai_weights(encoder_path)
    dec = read_openai_weights(decoder_path)
    cfg = config_from_openai(enc, dec, image_size=image_size)
    state = convert_openai_state_dicts(enc, dec, config=cfg)
    model = DiscreteVAE(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()

"""DALL·E text -> image: tokenize, sample image tokens, decode with the dVAE, rerank with CLIP.

Two folder layouts load as a :class:`DallePipeline`:

- a pipeline folder (``model_index.json``; what ``tessera train --install`` writes):
  ``transformer/`` (kind ``dalle``), ``vae/``, ``tokenizer/`` and optionally ``clip/`` (the
  reranker, with its own tokenizer), plus the sampling defaults chosen for it;
- a transformer checkpoint with its tokenizer beside the weights and the dVAE in ``vae/``
  (what ``tessera dalle train`` exports as ``final/``; the layout before pipeline folders).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from tessera.config.sampling import DalleSampling
from tessera.errors import CheckpointError, ConfigError, DataError
from tessera.models.dalle import DALLE, prepare_text, warn_truncated
from tessera.nn.rng import generator_for, module_device
from tessera.pipelines.base import (
    ComponentRef,
    ImageTokenizer,
    PipelineIndex,
    Samples,
    rerank,
    write_index,
)
from tessera.sampling.rerank import Reranker, load_scorer
from tessera.sampling.sample import generate_image_tokens
from tessera.text import TextTokenizer

__all__ = [
    "IMAGE_TOKENIZER_KINDS",
    "DallePipeline",
    "check_compatible",
    "export_checkpoint",
    "load_image_tokenizer",
    "save_pipeline",
]

# checkpoint kinds that turn images into the transformer's token grids and back: the paper's
# dVAE and the VQGAN (ruDALL-E's tokenizer); both have encode / decode / config.image_size /
# config.grid_size / config.vocab_size
IMAGE_TOKENIZER_KINDS = ("vae", "vqgan")


def load_image_tokenizer(path: str | Path) -> Any:
    """A dVAE or VQGAN checkpoint directory, in eval mode; another kind is a one-line error."""
    from tessera.checkpoint import load_checkpoint, read_config

    kind, _ = read_config(path)
    if kind not in IMAGE_TOKENIZER_KINDS:
        raise CheckpointError(
            f"{path} holds a {kind!r} checkpoint, not an image tokenizer "
            f"({' or '.join(IMAGE_TOKENIZER_KINDS)})"
        )
    return load_checkpoint(path, kind=kind).obj.eval()


_SETTINGS = {f.name for f in dataclasses.fields(DalleSampling)}


def check_compatible(cfg: Any, vae: Any, tokenizer: Any) -> None:
    """One-line errors when the dVAE or tokenizer does not fit the transformer's config."""
    vc = vae.config
    factors = tuple(getattr(vc, "factor_vocabs", ()))  # a factorised tokenizer's code books
    if factors != tuple(cfg.image_factors):
        have = f"factors {list(factors)}" if factors else "one token per position"
        want = f"factors {list(cfg.image_factors)}" if cfg.image_factors else "one per position"
        raise ConfigError(
            f"the image tokenizer makes {have}; the transformer expects {want} "
            f"(set model.image_factors / model.image_vocab)"
        )
    vocab = sum(factors) if factors else vc.vocab_size
    if vocab != cfg.image_vocab or vc.grid_size != cfg.grid_size:
        raise ConfigError(
            f"the dVAE makes {vc.grid_size}x{vc.grid_size} tokens of {vocab} codes; the "
            f"transformer expects {cfg.grid_size}x{cfg.grid_size} of {cfg.image_vocab} "
            f"(set model.grid_size / model.image_vocab)"
        )
    if tokenizer.vocab_size > cfg.text_vocab:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens; the transformer's text vocabulary "
            f"holds {cfg.text_vocab} (set model.text_vocab)"
        )


def sampling_config(defaults: dict[str, Any], where: str) -> DalleSampling:
    """The :class:`DalleSampling` stored in a pipeline's defaults (unknown keys ignored:
    other pipeline-level defaults such as ``candidates`` live beside them)."""
    try:
        return DalleSampling(**{k: v for k, v in defaults.items() if k in _SETTINGS})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: bad sampling defaults: {e}") from None


@dataclasses.dataclass
class DallePipeline:
    """The DALL·E generator: transformer + dVAE + tokenizer, optionally a CLIP reranker.

    settings: the sampling settings used when ``generate`` is given none (a pipeline folder
      stores them, chosen by measurement, so ``tessera generate`` needs no flags).
    defaults: the folder's other defaults (``candidates``, ``keep``), for callers to use.
    """

    model: DALLE
    vae: ImageTokenizer
    tokenizer: TextTokenizer
    reranker: Reranker | None = None
    settings: DalleSampling = dataclasses.field(default_factory=DalleSampling)
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)

    kind: ClassVar[str] = "dalle"

    @property
    def image_size(self) -> int:
        return int(self.vae.config.image_size)

    @property
    def max_prompt_tokens(self) -> int:
        """The most prompt tokens the model reads; ``generate`` cuts longer prompts, with a
        warning on logger ``tessera.text``."""
        return min(self.model.config.text_len - 1, int(self.tokenizer.max_length))

    @property
    def capabilities(self) -> frozenset[str]:
        caps = {"text_to_image", "image_prompt", "guidance"}
        return frozenset(caps | ({"rerank"} if self.reranker is not None else set()))

    def text_streams(self, prompts: Sequence[str]) -> torch.Tensor:
        """``(B, text_len)`` text streams; a prompt longer than the model's text context is cut
        with a warning on logger ``tessera.text`` saying how many were cut."""
        enc = self.tokenizer.encode_batch(list(prompts))
        warn_truncated(enc.lengths, self.model.config)
        return prepare_text(enc.ids, enc.lengths, self.model.config)

    def image_prompt_tokens(self, image: torch.Tensor, keep_rows: int) -> torch.Tensor:
        """Tokens of the first ``keep_rows`` rows of an image's dVAE grid, raster order:
        image (B, 3, H, W) in [0, 1] at the dVAE's size -> (B, keep_rows * grid)."""
        g = self.model.config.grid_size
        if not 0 <= keep_rows <= g:
            raise DataError(f"keep_rows must be in [0, {g}] (the grid has {g} rows)")
        size = self.vae.config.image_size
        if image.shape[-2:] != (size, size):
            raise DataError(f"image prompt must be {size}x{size}, got {tuple(image.shape[-2:])}")
        tokens: torch.Tensor = self.vae.encode(image)[:, :keep_rows].flatten(1)
        return tokens

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        seed: int = 0,
        keep: int | None = None,
        settings: DalleSampling | None = None,
        image_prompt: torch.Tensor | None = None,
        keep_rows: int = 0,
        batch_size: int = 64,
        precision: str = "fp32",
    ) -> Samples:
        """``n`` samples per prompt. image_prompt: one image (1, 3, H, W) or one per prompt
        (B, 3, H, W) whose first ``keep_rows`` token rows are kept (the paper's image-to-image
        translation). Every draw comes from one generator seeded with ``seed``. With a
        reranker each prompt's samples come best first, and only the best ``keep`` of the
        ``n`` are returned (default: all; the paper keeps 32 of 512). settings: default the
        pipeline's own. precision: ``fp32`` or ``bf16`` (autocast around token sampling only;
        the dVAE decode and the reranker stay in float32)."""
        if precision not in ("fp32", "bf16"):
            raise DataError(f"precision must be fp32 or bf16, got {precision!r}")
        if n < 1:
            raise DataError(f"n must be >= 1, got {n}")
        if keep is not None and (self.reranker is None or not 1 <= keep <= n):
            raise DataError(f"keep needs a reranker and 1 <= keep <= n = {n}, got {keep}")
        prompts = list(prompts)
        if not prompts:
            raise DataError("no prompts given")
        settings = settings or self.settings
        text = self.text_streams(prompts).repeat_interleave(n, dim=0)
        prefix = None
        if image_prompt is not None and keep_rows > 0:
            rows = self.image_prompt_tokens(image_prompt, keep_rows)
            if rows.shape[0] == 1:
                rows = rows.expand(len(prompts), -1)
            elif rows.shape[0] != len(prompts):
                raise DataError("give one image prompt, or one per prompt")
            prefix = rows.repeat_interleave(n, dim=0)
        device = module_device(self.model)
        gen = generator_for(device, seed)  # sample() draws on the model's device
        chunks = []
        for s in range(0, text.shape[0], batch_size):
            p = None if prefix is None else prefix[s : s + batch_size].to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                tokens = generate_image_tokens(
                    self.model,
                    text[s : s + batch_size].to(device),
                    settings=settings,
                    prefix=p,
                    generator=gen,
                )
            chunks.append(tokens.cpu())
        g, f = self.model.config.grid_size, self.model.config.factors
        tokens = torch.cat(chunks).view(-1, g, g * f)
        images = torch.cat(
            [self.vae.decode(tokens[s : s + batch_size]) for s in range(0, len(tokens), batch_size)]
        )
        index = [i for i in range(len(prompts)) for _ in range(n)]
        out = Samples(images, [prompts[i] for i in index], index, tokens=tokens)
        return out if self.reranker is None else rerank(out, self.reranker, n, keep=keep)

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls, path: str | Path, *, vae: str | Path | None = None, clip: str | Path | None = None
    ) -> DallePipeline:
        """A transformer checkpoint with its tokenizer (and the dVAE in ``vae/`` unless ``vae``
        names another); ``clip``: a CLIP checkpoint that reranks."""
        from tessera.checkpoint import load_checkpoint

        path = Path(path)
        ck = load_checkpoint(path, kind="dalle")
        if ck.tokenizer is None:
            raise CheckpointError(f"{path} has no tokenizer.json: cannot encode prompts")
        vae_model = load_image_tokenizer(Path(vae) if vae is not None else path / "vae")
        check_compatible(ck.config, vae_model, ck.tokenizer)
        return cls(
            model=ck.obj.eval(),
            vae=vae_model.eval(),
            tokenizer=ck.tokenizer,
            reranker=None if clip is None else load_scorer(clip),
        )

    @classmethod
    def from_folder(
        cls,
        path: str | Path,
        index: PipelineIndex,
        *,
        vae: str | Path | None = None,
        clip: str | Path | None = None,
    ) -> DallePipeline:
        """A pipeline folder; ``vae`` / ``clip`` replace the folder's own components."""
        from tessera.checkpoint import load

        path = Path(path)
        need = {"transformer": "dalle", "vae": "vae", "tokenizer": "tokenizer"}
        for role, kind in {**need, "clip": "clip"}.items():
            ref = index.components.get(role)
            if ref is None and role in need:
                raise CheckpointError(f"{path}: the pipeline has no {role!r} component")
            if (
                ref is not None
                and ref.kind != kind
                and not (role == "vae" and ref.kind in IMAGE_TOKENIZER_KINDS)
            ):
                raise CheckpointError(f"{path}: component {role!r} is a {ref.kind!r}, not {kind!r}")
        sub = {role: path / ref.path for role, ref in index.components.items()}
        model = load(sub["transformer"], kind="dalle")
        vae_model = load_image_tokenizer(Path(vae) if vae is not None else sub["vae"])
        tok = load(sub["tokenizer"], kind="tokenizer")
        check_compatible(model.config, vae_model, tok)
        clip_dir = Path(clip) if clip is not None else sub.get("clip")
        return cls(
            model=model.eval(),
            vae=vae_model.eval(),
            tokenizer=tok,
            reranker=None if clip_dir is None else load_scorer(clip_dir),
            settings=sampling_config(index.defaults, str(path)),
            defaults=dict(index.defaults),
        )


# -- saving ----------------------------------------------------------------------------------


def export_checkpoint(out_dir: str | Path, *, model: DALLE, vae: Any, tokenizer: Any) -> Path:
    """Write ``out_dir`` = transformer + tokenizer checkpoint, with the dVAE in ``vae/``."""
    from tessera.checkpoint import save

    out = save(out_dir, config=model.config, model=model, tokenizer=tokenizer, overwrite=True)
    save(out / "vae", config=vae.config, model=vae, overwrite=True)
    return out


def save_pipeline(
    out_dir: str | Path,
    *,
    model: DALLE,
    vae: Any,
    tokenizer: Any,
    clip: Any | None = None,
    clip_tokenizer: Any | None = None,
    defaults: dict[str, Any] | None = None,
    dtype: str | None = None,
) -> Path:
    """Write a pipeline folder: ``model_index.json`` + ``transformer/``, ``vae/``,
    ``tokenizer/`` and, with a CLIP model, ``clip/`` (saved with ``clip_tokenizer``, its own).
    defaults: sampling defaults stored with it. dtype ``"float16"`` halves the weights on
    disk."""
    from tessera.checkpoint import save
    from tessera.io import atomic_dir

    check_compatible(model.config, vae, tokenizer)
    if defaults:
        sampling_config(defaults, "defaults")  # refuse bad values now, not at load time
    components = {
        "transformer": ComponentRef("dalle", "transformer"),
        "vae": ComponentRef(vae.config.kind, "vae"),
        "tokenizer": ComponentRef("tokenizer", "tokenizer"),
    }
    with atomic_dir(out_dir) as tmp:
        save(tmp / "transformer", config=model.config, model=model, dtype=dtype)
        save(tmp / "vae", config=vae.config, model=vae, dtype=dtype)
        tokenizer.save(tmp / "tokenizer")
        if clip is not None:
            if clip_tokenizer is None:
                raise ConfigError("save_pipeline: a CLIP model needs its clip_tokenizer")
            save(
                tmp / "clip", config=clip.config, model=clip, tokenizer=clip_tokenizer, dtype=dtype
            )
            components["clip"] = ComponentRef("clip", "clip")
        write_index(tmp, PipelineIndex("dalle", components, dict(defaults or {})))
    return Path(out_dir)

"""DALL·E 2 (unCLIP) text -> image: CLIP text embedding -> prior -> CLIP image embedding ->
diffusion decoder -> diffusion upsamplers, reranked by the same CLIP.

A pipeline folder (``model_index.json``, pipeline kind ``"unclip"``) holds ``tokenizer/``,
``clip/`` (with its tokenizer), one or both priors (``prior/``: the diffusion prior, kind
``prior``; ``ar_prior/``: the autoregressive one, kind ``ar_prior``), ``decoder/`` and
``upsampler_1/``, ``upsampler_2/``, ... (applied in order), plus the sampling defaults
(:class:`UnclipSampling`) chosen for it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from tessera.config.sampling import PriorKind, UnclipSampling
from tessera.errors import CheckpointError, ConfigError, DataError
from tessera.models.clip import CLIP
from tessera.models.decoder import Decoder
from tessera.models.prior import ARPrior, DiffusionPrior
from tessera.models.upsampler import Upsampler
from tessera.pipelines.base import ComponentRef, PipelineIndex, Samples, rerank, write_index
from tessera.sampling.rerank import CLIPScorer
from tessera.sampling.unclip import decode, upsample
from tessera.text import TextTokenizer

__all__ = ["PRIOR_KINDS", "UnclipPipeline", "save_unclip_pipeline", "settings_from_defaults"]

# --prior-kind value -> (folder role, checkpoint kind)
PRIOR_KINDS: dict[PriorKind, tuple[str, str]] = {
    "diffusion": ("prior", "prior"),
    "ar": ("ar_prior", "ar_prior"),
}


def settings_from_defaults(defaults: dict[str, Any], where: str) -> UnclipSampling:
    """A folder's stored sampling defaults as settings (a one-line error names the folder)."""
    names = {f.name for f in dataclasses.fields(UnclipSampling)}
    try:
        return UnclipSampling(**{k: v for k, v in defaults.items() if k in names})
    except (TypeError, ValueError, ConfigError) as e:
        raise CheckpointError(f"{where}: bad unCLIP sampling defaults: {e}") from None


@dataclasses.dataclass
class UnclipPipeline:
    """tokenizer + CLIP + priors + decoder + upsamplers (in order); CLIP also reranks.

    priors: prior kind (``diffusion``, ``ar``) -> model; ``settings.prior_kind`` picks one."""

    tokenizer: TextTokenizer
    clip: CLIP
    clip_tokenizer: TextTokenizer
    priors: dict[PriorKind, DiffusionPrior | ARPrior]
    decoder: Decoder
    upsamplers: list[Upsampler] = dataclasses.field(default_factory=list)
    settings: UnclipSampling = dataclasses.field(default_factory=UnclipSampling)
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)

    kind: ClassVar[str] = "unclip"

    def __post_init__(self) -> None:
        if not self.priors or set(self.priors) - set(PRIOR_KINDS):
            raise ConfigError(f"priors must be a non-empty subset of {', '.join(PRIOR_KINDS)}")
        for prior in self.priors.values():
            check_components(self.clip, prior, self.decoder, self.upsamplers, self.tokenizer)
        if self.settings.prior_kind not in self.priors:
            self.settings = dataclasses.replace(self.settings, prior_kind=next(iter(self.priors)))
        self.reranker = CLIPScorer(self.clip, self.clip_tokenizer)

    @property
    def image_size(self) -> int:
        size = int(self.decoder.config.image_size)
        for up in self.upsamplers:
            size *= int(up.config.scale)
        return size

    @property
    def capabilities(self) -> frozenset[str]:
        return frozenset(
            {
                "text_to_image",
                "guidance",
                "rerank",
                "variations",
                "interpolation",
                "text_diff",
                "inpainting",
            }
        )

    def prior(self, settings: UnclipSampling | None = None) -> DiffusionPrior | ARPrior:
        """The prior ``settings.prior_kind`` names (a one-line error when absent)."""
        kind = (settings or self.settings).prior_kind
        if kind not in self.priors:
            raise ConfigError(
                f"this pipeline has no {kind} prior (it has: {', '.join(sorted(self.priors))})"
            )
        return self.priors[kind]

    @property
    def device(self) -> torch.device:
        device: torch.device = next(self.decoder.parameters()).device
        return device

    def encode_text(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(caption ids (B, L) for the prior and decoder, CLIP text embeddings z_t (B, D))."""
        ids = self.tokenizer.encode_batch(list(prompts), add_eos=True).ids
        clip_ids = self.clip_tokenizer.encode_batch(list(prompts), add_eos=True).ids
        with torch.no_grad():
            z_t = self.clip.encode_text(clip_ids.to(next(self.clip.parameters()).device))
        return ids, z_t.float()

    def image_embeddings(
        self,
        prompts: Sequence[str],
        *,
        generator: torch.Generator | None = None,
        settings: UnclipSampling | None = None,
    ) -> torch.Tensor:
        """Prior samples z_i (B, D), unit norm, one per prompt."""
        from tessera.sampling.prior import sample_prior

        s = settings or self.settings
        ids, z_t = self.encode_text(prompts)
        return sample_prior(
            self.prior(s),
            ids,
            z_t,
            steps=s.prior_steps,
            guidance=s.prior_guidance,
            candidates=s.prior_candidates,
            generator=generator,
        )

    def decode(
        self,
        z_i: torch.Tensor,
        prompts: Sequence[str] | None = None,
        *,
        generator: torch.Generator | None = None,
        x_T: torch.Tensor | None = None,
        eta: float | None = None,
        settings: UnclipSampling | None = None,
    ) -> torch.Tensor:
        """Image embeddings (B, D) [+ captions] -> images at the pipeline's full size."""
        s = settings or self.settings
        text = None if prompts is None else self.encode_text(prompts)[0]
        images = decode(
            self.decoder,
            z_i,
            text,
            steps=s.decoder_steps,
            guidance=s.decoder_guidance,
            eta=s.eta if eta is None else eta,
            generator=generator,
            x_T=x_T,
            sampler=s.decoder_sampler if x_T is None else "ddim",
        )
        return self.upsample(images, generator=generator, settings=s)

    def upsample(
        self,
        images: torch.Tensor,
        *,
        generator: torch.Generator | None = None,
        settings: UnclipSampling | None = None,
    ) -> torch.Tensor:
        s = settings or self.settings
        for up in self.upsamplers:
            images = upsample(up, images, steps=s.upsampler_steps, generator=generator)
        return images

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        seed: int = 0,
        keep: int | None = None,
        settings: UnclipSampling | None = None,
        batch_size: int = 64,
    ) -> Samples:
        """``n`` samples per prompt, every draw from one generator seeded with ``seed`` (on
        the models' device); with ``keep`` each prompt's samples are reranked by CLIP and the
        best ``keep`` returned, best first."""
        if n < 1:
            raise DataError(f"n must be >= 1, got {n}")
        if keep is not None and not 1 <= keep <= n:
            raise DataError(f"keep must satisfy 1 <= keep <= n = {n}, got {keep}")
        prompts = list(prompts)
        if not prompts:
            raise DataError("no prompts given")
        self._warn_cut(prompts)
        s = settings or self.settings
        gen = torch.Generator(device=self.device).manual_seed(seed)
        flat = [p for p in prompts for _ in range(n)]
        chunks = []
        for lo in range(0, len(flat), batch_size):
            part = flat[lo : lo + batch_size]
            z_i = self.image_embeddings(part, generator=gen, settings=s)
            chunks.append(self.decode(z_i, part, generator=gen, settings=s).cpu())
        index = [i for i in range(len(prompts)) for _ in range(n)]
        out = Samples(torch.cat(chunks), flat, index)
        return rerank(out, self.reranker, n, keep=keep) if keep is not None or n > 1 else out

    @property
    def max_prompt_tokens(self) -> int:
        """The most prompt tokens the prior and decoder read (one more is the ``<eos>``);
        ``generate`` cuts longer prompts, with a warning on logger ``tessera.text``."""
        return int(self.tokenizer.max_length) - 1

    def _warn_cut(self, prompts: Sequence[str]) -> None:
        """Log, in DALL·E's words, how many prompts are longer than the models read: the
        tokenizers cut them (one behaviour for both generators: cut, with a warning)."""
        room = self.max_prompt_tokens
        lengths = [len(self.tokenizer.encode(p, truncate=False)) for p in prompts]
        over = [n for n in lengths if n > room]
        if over:
            logging.getLogger("tessera.text").warning(
                "%d prompt(s) longer than the model's %d text tokens were cut (longest: %d tokens)",
                len(over),
                room,
                max(over),
            )

    def check_caption_lengths(self, captions: Sequence[str]) -> None:
        """One-line error for captions longer than the prior and decoder's tokenizer or the
        CLIP's holds (the manipulations refuse them: they would be cut silently)."""
        for tok, whose in ((self.tokenizer, "model's"), (self.clip_tokenizer, "CLIP's")):
            room = tok.max_length - 1
            enc = tok.encode_batch(list(captions))
            over = [p for p, n in zip(captions, enc.lengths.tolist(), strict=True) if n > room]
            if over:
                raise DataError(
                    f"{len(over)} caption(s) longer than the {whose} {room} tokens, "
                    f"e.g. {over[0]!r}"
                )

    # -- loading -----------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, path: str | Path, index: PipelineIndex) -> UnclipPipeline:
        from tessera.checkpoint import load, load_checkpoint

        path = Path(path)
        need = {"tokenizer": "tokenizer", "clip": "clip", "decoder": "decoder"}
        optional = {role: kind for role, kind in PRIOR_KINDS.values()}
        for role, kind in {**need, **optional}.items():
            ref = index.components.get(role)
            if ref is None and role in need:
                raise CheckpointError(f"{path}: the pipeline has no {role!r} component")
            if ref is not None and ref.kind != kind:
                raise CheckpointError(f"{path}: component {role!r} is a {ref.kind!r}, not {kind!r}")
        if not any(role in index.components for role in optional):
            raise CheckpointError(f"{path}: the pipeline has no prior ('prior' or 'ar_prior')")
        ups = sorted(
            (r for r in index.components if r.startswith("upsampler_")),
            key=lambda r: int(r.split("_")[1]) if r.split("_")[1].isdigit() else -1,
        )
        for role in ups:
            if index.components[role].kind != "upsampler" or not role.split("_")[1].isdigit():
                raise CheckpointError(f"{path}: bad upsampler component {role!r}")
        sub = {role: path / ref.path for role, ref in index.components.items()}
        clip = load_checkpoint(sub["clip"], kind="clip")
        if clip.tokenizer is None:
            raise CheckpointError(f"{sub['clip']} has no tokenizer.json")
        return cls(
            tokenizer=load(sub["tokenizer"], kind="tokenizer"),
            clip=clip.obj.eval(),
            clip_tokenizer=clip.tokenizer,
            priors={
                name: load(sub[role], kind=kind).eval()
                for name, (role, kind) in PRIOR_KINDS.items()
                if role in sub
            },
            decoder=load(sub["decoder"], kind="decoder").eval(),
            upsamplers=[load(sub[r], kind="upsampler").eval() for r in ups],
            settings=settings_from_defaults(index.defaults, str(path)),
            defaults=dict(index.defaults),
        )


def check_components(
    clip: Any, prior: Any, decoder: Any, upsamplers: Sequence[Any], tokenizer: Any
) -> None:
    """One-line errors when the components do not fit together."""
    d = clip.config.embed_dim
    for name, dim in (
        ("prior", getattr(prior.config, "clip_dim", d)),
        ("decoder", decoder.config.clip_dim),
    ):
        if dim != d:
            raise ConfigError(f"the {name} expects {dim}-d CLIP embeddings; the CLIP makes {d}")
    size = decoder.config.image_size
    for i, up in enumerate(upsamplers, 1):
        if up.config.low_res_size != size:
            raise ConfigError(
                f"upsampler {i} takes {up.config.low_res_size} px images; it is given {size} px"
            )
        size = up.config.image_size
    if tokenizer.max_length > decoder.config.text_length:
        raise ConfigError(
            f"the tokenizer makes {tokenizer.max_length} tokens; the decoder reads "
            f"{decoder.config.text_length}"
        )


def save_unclip_pipeline(
    out_dir: str | Path,
    *,
    tokenizer: TextTokenizer,
    clip: CLIP,
    clip_tokenizer: TextTokenizer,
    priors: dict[PriorKind, DiffusionPrior | ARPrior],
    decoder: Decoder,
    upsamplers: Sequence[Upsampler] = (),
    defaults: dict[str, Any] | None = None,
    dtype: str | None = None,
) -> Path:
    """Write an unCLIP pipeline folder (``dtype="float16"`` halves the weights on disk)."""
    from tessera.checkpoint import save
    from tessera.io import atomic_dir

    if not priors or set(priors) - set(PRIOR_KINDS):
        raise ConfigError(f"priors must be a non-empty subset of {', '.join(PRIOR_KINDS)}")
    for prior in priors.values():
        check_components(clip, prior, decoder, upsamplers, tokenizer)
    settings_from_defaults(dict(defaults or {}), "defaults")
    components = {
        "tokenizer": ComponentRef("tokenizer", "tokenizer"),
        "clip": ComponentRef("clip", "clip"),
        "decoder": ComponentRef("decoder", "decoder"),
    }
    with atomic_dir(out_dir) as tmp:
        tokenizer.save(tmp / "tokenizer")
        save(tmp / "clip", config=clip.config, model=clip, tokenizer=clip_tokenizer, dtype=dtype)
        for name, prior in priors.items():
            role, kind = PRIOR_KINDS[name]
            save(tmp / role, config=prior.config, model=prior, dtype=dtype)
            components[role] = ComponentRef(kind, role)
        save(tmp / "decoder", config=decoder.config, model=decoder, dtype=dtype)
        for i, up in enumerate(upsamplers, 1):
            save(tmp / f"upsampler_{i}", config=up.config, model=up, dtype=dtype)
            components[f"upsampler_{i}"] = ComponentRef("upsampler", f"upsampler_{i}")
        write_index(tmp, PipelineIndex("unclip", components, dict(defaults or {})))
    return Path(out_dir)

"""What every text-to-image pipeline offers, and the pipeline folder they load from.

- :class:`TextToImage`: the protocol the evaluators, the demo, the CLI and the server are
  typed against: ``generate(prompts, *, n, seed, keep) -> Samples``.
- :class:`Samples`: the images of one call, prompt-major; :func:`write_samples` writes them as
  PNGs + ``grid.png`` + ``manifest.jsonl`` (what ``tessera eval`` reads back).
- The pipeline folder: ``model_index.json`` naming the pipeline kind and, per component, its
  checkpoint kind and subfolder (the layout diffusers users know), plus sampling defaults.
  :func:`tessera.pipelines.load_pipeline` reads any such folder. The file comes from users,
  so it is checked like any untrusted input: component paths must be plain subfolder names.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch

from tessera._version import __version__
from tessera.data.images import save_grid, to_uint8
from tessera.errors import CheckpointError
from tessera.sampling.rerank import Reranker, best_first

__all__ = [
    "MODEL_INDEX",
    "PIPELINE_KINDS",
    "ComponentRef",
    "PipelineIndex",
    "Samples",
    "TextToImage",
    "read_index",
    "rerank",
    "write_index",
    "write_samples",
]

MODEL_INDEX = "model_index.json"
FORMAT_VERSION = 1

# pipeline kind -> "module:class" with ``from_folder(path, index, **options)``; imported on use.
PIPELINE_KINDS: dict[str, str] = {
    "dalle": "tessera.pipelines.dalle:DallePipeline",
    "unclip": "tessera.pipelines.unclip:UnclipPipeline",
}


@dataclasses.dataclass
class Samples:
    """Generated images of one call, in prompt-major order (all samples of prompt 0 first,
    best first when reranked)."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    prompts: list[str]
    prompt_index: list[int]
    scores: list[float] | None = None
    tokens: torch.Tensor | None = None  # (N, grid, grid) for token-based pipelines (DALL·E)

    def select(self, order: Sequence[int], scores: Sequence[float] | None = None) -> Samples:
        """The samples at ``order`` (e.g. a reranking), with new scores if given."""
        idx = torch.tensor(list(order), dtype=torch.long)
        return Samples(
            images=self.images[idx],
            prompts=[self.prompts[i] for i in order],
            prompt_index=[self.prompt_index[i] for i in order],
            scores=list(scores)
            if scores is not None
            else (None if self.scores is None else [self.scores[i] for i in order]),
            tokens=None if self.tokens is None else self.tokens[idx],
        )


class _ImageConfig(Protocol):
    @property
    def image_size(self) -> int: ...


class ImageTokenizer(Protocol):
    """What a DALL·E pipeline needs of its image tokenizer (the paper's dVAE, or any other
    kind with the same seam): images (B, 3, S, S) in [0, 1] <-> token grids (B, h, w)."""

    @property
    def config(self) -> _ImageConfig: ...

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def decode(self, tokens: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class TextToImage(Protocol):
    """A text-to-image generator.

    kind: the pipeline kind (``"dalle"``; later ``"unclip"``).
    image_size: side of the square images it makes, in pixels.
    capabilities: what it supports beyond text -> image: ``"rerank"`` (``keep`` works: it
      holds a CLIP reranker), ``"image_prompt"`` (keeps the top rows of an image), ...
    generate: ``n`` samples per prompt from one generator seeded with ``seed`` (same seed,
      same images); with ``keep`` each prompt's samples are reranked and the best ``keep``
      returned, best first. Implementations take further keyword-only options.
    """

    kind: str

    @property
    def image_size(self) -> int: ...

    @property
    def capabilities(self) -> frozenset[str]: ...

    def generate(
        self, prompts: Sequence[str], *, n: int = 1, seed: int = 0, keep: int | None = None
    ) -> Samples: ...


def rerank(samples: Samples, reranker: Reranker, n: int, *, keep: int | None = None) -> Samples:
    """Sort each prompt's ``n`` samples by the reranker's score, best first, keeping the best
    ``keep`` of each prompt (default: all ``n``)."""
    scores = reranker(samples.images, samples.prompts).float().cpu()
    order = best_first(scores, n, keep=keep)
    return samples.select(order, [float(scores[i]) for i in order])


def write_samples(
    out_dir: str | Path,
    samples: Samples,
    *,
    seed: int,
    settings: Mapping[str, Any] | Any = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """One PNG per sample, ``grid.png`` (a row per prompt) and ``manifest.jsonl``.

    settings: the sampling settings (a dataclass or a mapping), recorded on every line.
    """
    from PIL import Image

    recorded: dict[str, Any] = (
        dataclasses.asdict(settings)
        if dataclasses.is_dataclass(settings) and not isinstance(settings, type)
        else dict(settings)
        if isinstance(settings, Mapping)
        else {}
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pixels = to_uint8(samples.images)
    per_prompt: dict[int, int] = {}
    lines = []
    for i, img in enumerate(pixels):
        p = samples.prompt_index[i]
        j = per_prompt.get(p, 0)
        per_prompt[p] = j + 1
        name = f"{p:04d}-{j:03d}.png"
        Image.fromarray(img).save(out / name)
        rec = {
            "prompt": samples.prompts[i],
            "prompt_index": p,
            "sample": j,
            "file": name,
            "seed": seed,
            **recorded,
            **dict(extra or {}),
        }
        if samples.scores is not None:
            rec["score"] = samples.scores[i]
        lines.append(json.dumps(rec))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    save_grid(pixels, samples.prompt_index, out / "grid.png")
    return out


# -- the pipeline folder ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ComponentRef:
    """One component of a pipeline folder: its checkpoint kind and its subfolder."""

    kind: str
    path: str


@dataclasses.dataclass(frozen=True)
class PipelineIndex:
    """The parsed ``model_index.json``.

    pipeline: the pipeline kind (a key of :data:`PIPELINE_KINDS`).
    components: role (``transformer``, ``vae``, ``tokenizer``, ``clip``, ...) -> component.
    defaults: sampling defaults chosen for this pipeline (used when a caller gives none).
    """

    pipeline: str
    components: dict[str, ComponentRef]
    defaults: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> str:
        return (
            json.dumps(
                {
                    "pipeline": self.pipeline,
                    "format_version": FORMAT_VERSION,
                    "tessera_version": __version__,
                    "components": {
                        role: {"kind": c.kind, "path": c.path}
                        for role, c in self.components.items()
                    },
                    "defaults": self.defaults,
                },
                indent=2,
            )
            + "\n"
        )


def _check_subfolder(name: Any, where: str) -> str:
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or "/" in name
        or "\\" in name
        or name.startswith(".")
        or "\x00" in name
    ):
        raise CheckpointError(
            f"{where}: component path must be a plain subfolder name, got {name!r}"
        )
    return name


def read_index(path: str | Path) -> PipelineIndex:
    """Parse and check ``path/model_index.json``; every problem is one line naming the file."""
    file = Path(path) / MODEL_INDEX
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no {MODEL_INDEX}: not a pipeline folder") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {file}: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file}: expected a JSON object")
    unknown = set(data) - {
        "pipeline",
        "format_version",
        "tessera_version",
        "components",
        "defaults",
    }
    if unknown:
        raise CheckpointError(f"{file}: unknown key(s) {', '.join(sorted(unknown))}")
    kind = data.get("pipeline")
    if kind not in PIPELINE_KINDS:
        raise CheckpointError(
            f"{file}: unknown pipeline kind {kind!r} (known: {', '.join(sorted(PIPELINE_KINDS))})"
        )
    version = data.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{file}: format_version {version!r} is newer than this tessera reads "
            f"({FORMAT_VERSION}); upgrade tessera"
        )
    comps = data.get("components")
    if not isinstance(comps, dict) or not comps:
        raise CheckpointError(f"{file}: 'components' must be a non-empty object")
    components: dict[str, ComponentRef] = {}
    for role, ref in comps.items():
        if not isinstance(ref, dict) or set(ref) != {"kind", "path"}:
            raise CheckpointError(f'{file}: component {role!r} must be {{"kind", "path"}}')
        if not isinstance(ref["kind"], str):
            raise CheckpointError(f"{file}: component {role!r} has a non-string kind")
        components[role] = ComponentRef(ref["kind"], _check_subfolder(ref["path"], str(file)))
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise CheckpointError(f"{file}: 'defaults' must be an object")
    return PipelineIndex(kind, components, defaults)


def write_index(path: str | Path, index: PipelineIndex) -> Path:
    """Write ``path/model_index.json`` (atomically)."""
    from tessera.io import atomic_write_text

    return atomic_write_text(Path(path) / MODEL_INDEX, index.to_json())

"""Text -> image: tokenize, sample image tokens, decode with the dVAE, optionally rerank.

A pipeline directory (what ``tessera dalle train`` exports, what ``tessera generate`` reads)
is the transformer's checkpoint with its tokenizer, plus the dVAE checkpoint in ``vae/``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tessera.errors import CheckpointError, DataError
from tessera.models.dalle import DALLE, prepare_text, warn_truncated
from tessera.sampling.sample import SamplingConfig, generate_image_tokens

# reranker(images (N, 3, H, W) in [0, 1], prompts (N,)) -> scores (N,), higher is better.
Reranker = Callable[[torch.Tensor, Sequence[str]], torch.Tensor]


@dataclasses.dataclass
class Samples:
    """Generated images of one call, in prompt-major order (all samples of prompt 0 first,
    best first when reranked)."""

    images: torch.Tensor  # (N, 3, H, W) in [0, 1]
    tokens: torch.Tensor  # (N, grid, grid)
    prompts: list[str]
    prompt_index: list[int]
    scores: list[float] | None = None


@dataclasses.dataclass
class Pipeline:
    model: DALLE
    vae: Any
    tokenizer: Any
    reranker: Reranker | None = None

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
        return self.vae.encode(image)[:, :keep_rows].flatten(1)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        n: int = 1,
        settings: SamplingConfig | None = None,
        seed: int = 0,
        image_prompt: torch.Tensor | None = None,
        keep_rows: int = 0,
        batch_size: int = 64,
        keep: int | None = None,
    ) -> Samples:
        """``n`` samples per prompt. image_prompt: one image (1, 3, H, W) or one per prompt
        (B, 3, H, W) whose first ``keep_rows`` token rows are kept (the paper's image-to-image
        translation). Every draw comes from one generator seeded with ``seed``. With a
        reranker each prompt's samples come best first, and only the best ``keep`` of the
        ``n`` are returned (default: all; the paper keeps 32 of 512)."""
        if n < 1:
            raise DataError(f"n must be >= 1, got {n}")
        if keep is not None and (self.reranker is None or not 1 <= keep <= n):
            raise DataError(f"keep needs a reranker and 1 <= keep <= n = {n}, got {keep}")
        prompts = list(prompts)
        if not prompts:
            raise DataError("no prompts given")
        text = self.text_streams(prompts).repeat_interleave(n, dim=0)
        prefix = None
        if image_prompt is not None and keep_rows > 0:
            rows = self.image_prompt_tokens(image_prompt, keep_rows)
            if rows.shape[0] == 1:
                rows = rows.expand(len(prompts), -1)
            elif rows.shape[0] != len(prompts):
                raise DataError("give one image prompt, or one per prompt")
            prefix = rows.repeat_interleave(n, dim=0)
        gen = torch.Generator().manual_seed(seed)
        device = next(self.model.parameters()).device
        chunks = []
        for s in range(0, text.shape[0], batch_size):
            p = None if prefix is None else prefix[s : s + batch_size].to(device)
            chunks.append(
                generate_image_tokens(
                    self.model,
                    text[s : s + batch_size].to(device),
                    settings=settings,
                    prefix=p,
                    generator=gen,
                ).cpu()
            )
        g = self.model.config.grid_size
        tokens = torch.cat(chunks).view(-1, g, g)
        images = torch.cat(
            [self.vae.decode(tokens[s : s + batch_size]) for s in range(0, len(tokens), batch_size)]
        )
        index = [i for i in range(len(prompts)) for _ in range(n)]
        out = Samples(images, tokens, [prompts[i] for i in index], index)
        if self.reranker is not None:
            out = rerank(out, self.reranker, n, keep=keep)
        return out


def rerank(samples: Samples, reranker: Reranker, n: int, *, keep: int | None = None) -> Samples:
    """Sort each prompt's ``n`` samples by the reranker's score, best first, keeping the best
    ``keep`` of each prompt (default: all ``n``)."""
    scores = reranker(samples.images, samples.prompts).float().cpu()
    order = []
    for start in range(0, len(samples.prompts), n):
        block = scores[start : start + n]
        order += (start + torch.argsort(block, descending=True, stable=True))[:keep].tolist()
    idx = torch.tensor(order)
    return Samples(
        samples.images[idx],
        samples.tokens[idx],
        [samples.prompts[i] for i in order],
        [samples.prompt_index[i] for i in order],
        [float(scores[i]) for i in order],
    )


def save_pipeline(out_dir: str | Path, *, model: DALLE, vae: Any, tokenizer: Any) -> Path:
    """Write ``out_dir`` = transformer + tokenizer checkpoint, with the dVAE in ``vae/``."""
    from tessera.checkpoint import save

    out = save(out_dir, config=model.config, model=model, tokenizer=tokenizer, overwrite=True)
    save(out / "vae", config=vae.config, model=vae, overwrite=True)
    return out


def load_pipeline(path: str | Path, *, vae: str | Path | None = None) -> Pipeline:
    """Load a pipeline directory (or a transformer checkpoint plus ``vae``, a dVAE checkpoint)."""
    from tessera.checkpoint import load_checkpoint

    path = Path(path)
    ck = load_checkpoint(path, kind="dalle")
    if ck.tokenizer is None:
        raise CheckpointError(f"{path} has no tokenizer.json: cannot encode prompts")
    vae_dir = Path(vae) if vae is not None else path / "vae"
    vae_model = load_checkpoint(vae_dir, kind="vae").obj
    from tessera.models.dalle_stage import check_compatible

    check_compatible(ck.config, vae_model, ck.tokenizer)
    model = ck.obj.eval()
    return Pipeline(model=model, vae=vae_model.eval(), tokenizer=ck.tokenizer)


def write_samples(
    out_dir: str | Path,
    samples: Samples,
    *,
    seed: int,
    settings: SamplingConfig,
    extra: dict[str, Any] | None = None,
) -> Path:
    """One PNG per sample, ``grid.png`` (a row per prompt) and ``manifest.jsonl``."""
    from PIL import Image

    from tessera.vae.images import to_uint8

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
            **dataclasses.asdict(settings),
            **(extra or {}),
        }
        if samples.scores is not None:
            rec["score"] = samples.scores[i]
        lines.append(json.dumps(rec))
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    save_grid(pixels, samples.prompt_index, out / "grid.png")
    return out


def save_grid(pixels: np.ndarray, prompt_index: Sequence[int], path: Path, pad: int = 2) -> None:
    """Grid PNG of uint8 images ``(N, H, W, 3)``: one row per prompt."""
    from PIL import Image

    rows: dict[int, list[np.ndarray]] = {}
    for img, p in zip(pixels, prompt_index):
        rows.setdefault(p, []).append(img)
    n_rows, n_cols = len(rows), max(len(r) for r in rows.values())
    h, w = pixels.shape[1:3]
    grid = np.full((n_rows * (h + pad) + pad, n_cols * (w + pad) + pad, 3), 200, np.uint8)
    for r, key in enumerate(sorted(rows)):
        for c, img in enumerate(rows[key]):
            y, x = pad + r * (h + pad), pad + c * (w + pad)
            grid[y : y + h, x : x + w] = img
    Image.fromarray(grid).save(path)

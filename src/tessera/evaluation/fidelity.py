"""Caption fidelity on ``shapes``: the automatic counterpart of the paper's human evaluation.

Each (prompt, image) pair is judged by the spec's checker (``tessera.check_image``); the
score is the share of images whose every claim holds ("strict"), the share per claim (count,
colour+shape, size, position, relation; each over the images whose prompt makes that claim),
and both split by whether the prompt names a held-out colour-shape pair (a combination the
default training split never shows) or only seen pairs.

:func:`fidelity_prompts` picks the canonical eval prompts of a benchmark, optionally with a
fixed share naming held-out pairs; :func:`score_manifest` scores generated files;
:func:`generate_and_score` samples from a pipeline and scores in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tessera.errors import DataError

if TYPE_CHECKING:
    from tessera.pipelines.base import Samples, TextToImage

__all__ = [
    "CLAIMS",
    "FidelityTally",
    "fidelity_prompts",
    "generate_and_score",
    "score_manifest",
    "score_pairs",
]

logger = logging.getLogger("tessera.evaluation")

CLAIMS = ("count", "color_shape", "size", "position", "relation")
BUCKETS = ("seen", "held_out")


@dataclass
class _Count:
    ok: int = 0
    n: int = 0

    def add(self, verdict: bool) -> None:
        self.ok += int(verdict)
        self.n += 1

    def rate(self) -> float | None:
        return self.ok / self.n if self.n else None


@dataclass
class FidelityTally:
    """Accumulates checker verdicts; :meth:`metrics` gives the report dict.

    held_out: colour-shape pairs ("green triangle", ...) that make a prompt count as
    held-out (default: the default ``ShapesConfig``'s).
    """

    held_out: frozenset[str] | None = None
    strict: dict[str, _Count] = field(default_factory=lambda: {b: _Count() for b in BUCKETS})
    claims: dict[str, dict[str, _Count]] = field(
        default_factory=lambda: {b: {c: _Count() for c in CLAIMS} for b in BUCKETS}
    )
    skipped: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.held_out is None:
            from tessera.config.shapes import ShapesConfig

            self.held_out = frozenset(ShapesConfig().held_out)

    def bucket(self, claims: Any) -> str:
        held = self.held_out or frozenset()
        return "held_out" if any(f"{o.color} {o.shape}" in held for o in claims.objects) else "seen"

    def add(self, prompt: str, image: Any) -> Any:
        """Judge one pair; returns the ``CheckResult`` (None if the prompt is not canonical)."""
        from tessera.data.shapes import check_image, parse_prompt

        try:
            claims = parse_prompt(prompt)
        except DataError:
            self.skip("prompt_not_canonical")
            return None
        result = check_image(image, claims)
        b = self.bucket(claims)
        self.strict[b].add(result.passed)
        for name in CLAIMS:
            verdict = getattr(result, name)
            if verdict is not None:
                self.claims[b][name].add(bool(verdict))
        return result

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def metrics(self) -> dict[str, Any]:
        """``strict``, ``n``, one key per claim, then the same per bucket and skip counts."""
        n = sum(c.n for c in self.strict.values())
        out: dict[str, Any] = {"strict": _ratio(sum(c.ok for c in self.strict.values()), n)}
        out["n"] = n
        for name in CLAIMS:
            ok = sum(self.claims[b][name].ok for b in BUCKETS)
            out[name] = _ratio(ok, sum(self.claims[b][name].n for b in BUCKETS))
        for b in BUCKETS:
            out[f"strict_{b}"] = self.strict[b].rate()
            out[f"n_{b}"] = self.strict[b].n
            out[f"claims_{b}"] = {c: self.claims[b][c].rate() for c in CLAIMS}
        out["skipped"] = dict(sorted(self.skipped.items()))
        return out


def _ratio(ok: int, n: int) -> float | None:
    return ok / n if n else None


def score_pairs(
    pairs: Iterable[tuple[str, Any]], *, held_out: Iterable[str] | None = None
) -> dict[str, Any]:
    """Fidelity metrics of (prompt, image) pairs; see :meth:`FidelityTally.metrics`."""
    tally = FidelityTally(held_out=frozenset(held_out) if held_out is not None else None)
    for prompt, image in pairs:
        tally.add(prompt, image)
    return tally.metrics()


def score_manifest(
    path: str | Path, *, held_out: Iterable[str] | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score a manifest of generated images: (metrics, one record per judged image).

    Entries without a prompt, with a non-canonical prompt, or with an unreadable image are
    skipped and counted under ``metrics["skipped"]``; no judged image at all is an error.
    """
    from tessera.evaluation.manifest import ImageSet

    images = ImageSet(path)
    if not str(path).endswith((".jsonl", ".json")):
        raise DataError(f"fidelity needs a manifest (.jsonl with prompt and file), got {path}")
    tally = FidelityTally(held_out=frozenset(held_out) if held_out is not None else None)
    records = []
    for entry, image in images:
        if entry.prompt is None:
            tally.skip("prompt_missing")
            continue
        result = tally.add(entry.prompt, image)
        if result is not None:
            verdicts = {c: getattr(result, c) for c in CLAIMS}
            records.append(
                {
                    "file": str(entry.file),
                    "prompt": entry.prompt,
                    "passed": result.passed,
                    **verdicts,
                }
            )
    for reason, count in images.report.to_dict().get("skipped", {}).items():
        tally.skipped[reason] = tally.skipped.get(reason, 0) + int(count)
    metrics = tally.metrics()
    if metrics["n"] == 0:
        raise DataError(f"no image in {path} could be judged (skipped: {metrics['skipped']})")
    return metrics, records


def fidelity_prompts(
    n: int,
    *,
    held_out_share: float | None = None,
    start: int = 0,
    config: Any = None,
) -> list[str]:
    """Canonical prompts of the ``shapes`` eval split, in eval order from ``start``.

    held_out_share: None takes the first ``n`` (about a quarter name a held-out pair); a share
    s takes the first ``round(n * s)`` held-out and ``n - round(n * s)`` seen prompts, keeping
    the split's order (issue 8's benchmark: 300 prompts, half held-out).
    """
    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import ShapesSource, parse_prompt

    config = config if config is not None else ShapesConfig()
    if held_out_share is None:
        source = ShapesSource(config, split="eval", n=n, start=start)
        return [source.prompt(i) for i in range(n)]
    if not 0.0 <= held_out_share <= 1.0:
        raise DataError(f"held_out_share must be in [0, 1], got {held_out_share}")
    if held_out_share > 0 and not config.held_out:
        raise DataError("held_out_share > 0 but the shapes config holds no pair out")
    tally = FidelityTally(held_out=frozenset(config.held_out))
    want = {"held_out": round(n * held_out_share)}
    want["seen"] = n - want["held_out"]
    picked: list[tuple[int, str]] = []
    source = ShapesSource(config, split="eval", n=None, start=start)
    for i in range(start, start + 200 * max(n, 1)):
        prompt = source.prompt(i - start)
        b = tally.bucket(parse_prompt(prompt))
        if want[b] > 0:
            want[b] -= 1
            picked.append((i, prompt))
            if not any(want.values()):
                return [p for _, p in picked]
    raise DataError(f"could not find {n} prompts with held-out share {held_out_share}")


def generate_and_score(
    pipe: TextToImage,
    prompts: Sequence[str],
    *,
    samples_per_prompt: int = 1,
    keep: int | None = None,
    seed: int = 0,
    **options: Any,
) -> tuple[dict[str, Any], Samples]:
    """Sample ``samples_per_prompt`` images per prompt (keeping the reranker's best ``keep``
    when the pipeline has one) and score them; returns (metrics, samples). ``options`` go to
    the pipeline's ``generate`` (DALL·E: ``settings``)."""
    from tessera.data.images import to_uint8

    out = pipe.generate(list(prompts), n=samples_per_prompt, keep=keep, seed=seed, **options)
    pixels = to_uint8(out.images)
    return score_pairs(zip(out.prompts, np.asarray(pixels))), out

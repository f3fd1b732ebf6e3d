"""``ShapesSource``: the built-in data set as an iterable of :class:`Example`.

Examples are computed on demand from (seed, split, index), so a source costs nothing to
create, any index is reachable in O(1), and ranks or workers that take disjoint index sets
(:meth:`ShapesSource.shard`) see disjoint examples without coordination.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from PIL import Image

from tessera.config.shapes import ShapesConfig
from tessera.data.example import Example
from tessera.data.shapes.captions import canonical_prompt, sample_captions
from tessera.data.shapes.render import render_scene
from tessera.data.shapes.scene import Scene, allowed_pairs, example_rng, sample_scene
from tessera.errors import ConfigError

__all__ = ["ShapesSource", "evaluation_prompts", "example_key"]


def example_key(split: str, index: int) -> str:
    """Stable key of example ``index`` of ``split``, e.g. ``"train-000042"``."""
    return f"{split}-{index:06d}"


class ShapesSource:
    """Examples ``start, start + step, ...`` of one split (``n`` of them, or endless if None).

    Accessors take a position ``i`` in the source (0-based; ``i < n`` when ``n`` is set) and
    map it to the example index ``start + i * step``; keys and file names use that index.

    config: drawing settings (default ``ShapesConfig()``: 64 px, seed 0, default held-out).
    split: ``"train"`` (never shows ``config.held_out`` pairs) or ``"eval"`` (all pairs).
    """

    def __init__(
        self,
        config: ShapesConfig | None = None,
        *,
        split: str = "train",
        n: int | None = None,
        start: int = 0,
        step: int = 1,
    ) -> None:
        self.config = config if config is not None else ShapesConfig()
        allowed_pairs(split, self.config.held_out)  # validates the split and the held-out list
        if n is not None and n < 0:
            raise ConfigError(f"shapes: n must be >= 0, got {n}")
        if start < 0 or step < 1:
            raise ConfigError(f"shapes: need start >= 0 and step >= 1, got {start} and {step}")
        self.split, self.n, self.start, self.step = split, n, start, step

    def __repr__(self) -> str:
        return (
            f"ShapesSource(split={self.split!r}, n={self.n}, start={self.start}, step={self.step}, "
            f"size={self.config.size}, seed={self.config.seed})"
        )

    def __len__(self) -> int:
        if self.n is None:
            raise TypeError("an endless ShapesSource (n=None) has no length")
        return self.n

    def index(self, i: int) -> int:
        """Example index of position ``i``."""
        if i < 0 or (self.n is not None and i >= self.n):
            raise IndexError(f"position {i} out of range for {self!r}")
        return self.start + i * self.step

    def scene(self, i: int) -> Scene:
        """Scene of position ``i``."""
        return sample_scene(self.config, self.split, self.index(i))

    def image(self, i: int) -> np.ndarray:
        """Pixels of position ``i``: uint8 (S, S, 3) RGB."""
        return render_scene(self.scene(i), supersample=self.config.supersample)

    def captions(self, i: int) -> tuple[str, ...]:
        """The ``config.n_captions`` captions of position ``i`` (the first is canonical)."""
        return self.scene_captions(self.scene(i))

    def prompt(self, i: int) -> str:
        """The canonical evaluation prompt of position ``i`` (see ``canonical_prompt``)."""
        return canonical_prompt(self.scene(i))

    def scene_captions(self, scene: Scene) -> tuple[str, ...]:
        """The captions of a scene of this source's split (drawn from its own stream, 1, so
        caption settings never change the scene)."""
        rng = example_rng(self.config.seed, scene.split, scene.index, stream=1)
        return sample_captions(
            scene, self.config.n_captions, rng, paraphrases=self.config.paraphrases
        )

    def example(self, i: int) -> Example:
        """Position ``i`` as an :class:`Example` (PIL RGB image, captions, key)."""
        scene = self.scene(i)
        pixels = render_scene(scene, supersample=self.config.supersample)
        return Example(
            image=Image.fromarray(pixels),
            captions=self.scene_captions(scene),
            key=example_key(self.split, scene.index),
        )

    __getitem__ = example

    def __iter__(self) -> Iterator[Example]:
        positions = itertools.count() if self.n is None else range(self.n)
        for i in positions:
            yield self.example(i)

    def shard(self, rank: int, world_size: int) -> ShapesSource:
        """The positions ``rank, rank + world_size, ...`` of this source, as a source: shards of
        different ranks are disjoint and together cover this source."""
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"shapes: need 0 <= rank < world_size, got {rank} and {world_size}")
        n = None if self.n is None else max(0, -(-(self.n - rank) // world_size))
        return ShapesSource(
            self.config,
            split=self.split,
            n=n,
            start=self.start + rank * self.step,
            step=self.step * world_size,
        )


def evaluation_prompts(n: int, *, config: ShapesConfig | None = None, start: int = 0) -> list[str]:
    """Canonical prompts of eval examples ``start .. start + n - 1`` (the fidelity benchmark:
    about a quarter name a held-out colour-shape pair under the default config)."""
    source = ShapesSource(config, split="eval", n=n, start=start)
    return [source.prompt(i) for i in range(n)]

"""Resumable batch streams: the data position is part of every training checkpoint."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

import torch


class BatchStream(Protocol):
    """An endless iterator of batches whose position can be saved and restored exactly."""

    def __next__(self) -> Any: ...

    def state_dict(self) -> dict[str, int]: ...

    def load_state_dict(self, state: dict[str, int]) -> None: ...


class EpochBatches:
    """Endless batches from a deterministic per-epoch iterable factory.

    ``factory(epoch)`` must yield the same batches for the same epoch every time (derive any
    shuffling and augmentation from the epoch and a seed). The state is ``(epoch, consumed)``;
    restoring it rebuilds the epoch's iterator and skips the consumed batches, which is exact
    for every deterministic source (map-style data may pass ``skip`` to seek directly).
    """

    def __init__(
        self,
        factory: Callable[[int], Iterable[Any]],
        *,
        skip: Callable[[int, int], Iterator[Any]] | None = None,
    ) -> None:
        self._factory = factory
        self._skip = skip
        self.epoch = 0
        self.consumed = 0
        self._it: Iterator[Any] = iter(factory(0))

    def __iter__(self) -> EpochBatches:
        return self

    def __next__(self) -> Any:
        for _ in range(2):
            try:
                batch = next(self._it)
            except StopIteration:
                self.epoch += 1
                self.consumed = 0
                self._it = iter(self._factory(self.epoch))
                continue
            self.consumed += 1
            return batch
        raise RuntimeError("the data source yielded no batch in a whole epoch")

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        if self._skip is not None:
            self._it = self._skip(self.epoch, self.consumed)
            return
        self._it = iter(self._factory(self.epoch))
        for _ in range(self.consumed):
            next(self._it)


def shapes_image_batches(
    *, split: str, image_size: int, batch_size: int, seed: int, rank: int, world_size: int
) -> EpochBatches:
    """Endless ``{"images": (B, 3, S, S), "captions": [...]}`` batches of the built-in set.

    Batch ``b`` of rank ``r`` holds examples ``(b * world_size + r) * B ...`` of the split, so
    ranks never overlap and resuming seeks straight to the saved batch (no replay).
    """
    import numpy as np

    from tessera.config.shapes import ShapesConfig
    from tessera.data.shapes import ShapesSource

    src = ShapesSource(ShapesConfig(size=image_size, seed=seed), split=split)

    def batch(b: int) -> dict[str, Any]:
        start = (b * world_size + rank) * batch_size
        idx = range(start, start + batch_size)
        images = np.stack([src.image(i) for i in idx])  # (B, S, S, 3) uint8
        tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
        # "index": each example's global index, so its own random choices (caption, BPE
        # dropout) do not depend on how the global batch is split across ranks
        return {"images": tensor, "captions": [src.captions(i) for i in idx], "index": list(idx)}

    def from_batch(b0: int) -> Iterator[Any]:
        b = b0
        while True:
            yield batch(b)
            b += 1

    return EpochBatches(
        lambda epoch: from_batch(0), skip=lambda epoch, consumed: from_batch(consumed)
    )


def source_image_batches(
    spec: str,
    *,
    image_size: int,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    num_workers: int = 0,
) -> EpochBatches:
    """Batches from any ``open_source`` spec (folders, COCO, CUB, WebDataset shards).

    Each epoch re-reads the source in its order; random crops depend on (seed, epoch, key),
    so an epoch's batches are the same every time and resuming replays to the saved position.
    The built-in ``shapes`` spec takes the seekable fast path.
    """
    if spec.split(":")[0] == "shapes":
        split = spec.split(":")[1] if ":" in spec else "train"
        return shapes_image_batches(
            split=split,
            image_size=image_size,
            batch_size=batch_size,
            seed=seed,
            rank=rank,
            world_size=world_size,
        )
    from tessera.config.data import DataConfig
    from tessera.data import ImageTextDataset, ImageTransform, collate, open_source

    source = open_source(
        spec, config=DataConfig(image_size=image_size), rank=rank, world_size=world_size
    )
    transform = ImageTransform(image_size, train=True, seed=seed)
    dataset = ImageTextDataset(source, transform)

    def epoch(e: int) -> Iterable[Any]:
        dataset.set_epoch(e)
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=batch_size,
            collate_fn=collate,
            num_workers=num_workers,
            drop_last=True,
        )

    return EpochBatches(epoch)


def pick_caption(captions: Any, rng: random.Random) -> str:
    """One caption of an example: a string as is; of a list, one drawn from ``rng`` (a
    batch's own generator, see :class:`DrawnBatches`), so every caption of an image is
    seen over the epochs and a resumed run draws the same ones."""
    if isinstance(captions, str):
        return captions
    captions = list(captions)
    if not captions:
        return ""
    return captions[rng.randrange(len(captions))]


def draw_seed(seed: int, rank: int, index: int, stream: str = "") -> int:
    """The seed of one batch's random draws: a 63-bit hash of (run seed, rank, the batch's
    index on that rank, a stream name). Under ``grad_accum`` every micro-batch is its own
    batch, so (step, micro-batch) map one to one onto indices; ranks never share a seed."""
    key = f"{seed}/{rank}/{index}/{stream}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


class DrawnBatches:
    """Base of a stage's batch stream: wraps an image-caption stream and hands each batch the
    seed of its own random draws (:func:`draw_seed` of run seed, rank, batch index), so that
    noise levels, noise, crops and guidance drops differ across ranks and micro-batches and a
    resumed run draws exactly the same ones; the choices that belong to one example (caption,
    BPE dropout, caption dropout) come from :meth:`example_rngs`. Subclasses implement
    :meth:`make`; the batch index is part of the saved data position."""

    def __init__(self, inner: BatchStream, *, seed: int, rank: int) -> None:
        self.inner, self.seed, self.rank, self.index = inner, seed, rank, 0

    def __iter__(self) -> DrawnBatches:
        return self

    def __next__(self) -> Any:
        batch = next(self.inner)
        key = draw_seed(self.seed, self.rank, self.index)
        self.index += 1
        return self.make(batch, key)

    def make(self, batch: dict[str, Any], seed: int) -> Any:
        """The stage's batch from the source's ``batch``; ``seed`` seeds all its draws."""
        raise NotImplementedError

    def example_rngs(self, batch: dict[str, Any], seed: int) -> list[random.Random]:
        """One generator per example for the choices that belong to the example (its
        caption, its BPE dropout, whether its caption is dropped): keyed by the example's
        global index when the source gives it (the built-in set), so that the same global
        batch draws the same on any number of ranks and a checkpoint resumes exactly on
        another; else by the batch's ``seed`` and the position in the batch."""
        keys = batch.get("index")
        if keys is None:
            return [
                random.Random(draw_seed(seed, 0, i, "example"))
                for i in range(len(batch["captions"]))
            ]
        return [random.Random(draw_seed(self.seed, -1, int(k), "example")) for k in keys]

    def state_dict(self) -> dict[str, int]:
        return {**self.inner.state_dict(), "drawn": self.index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        state = dict(state)
        self.index = int(state.pop("drawn", 0))
        self.inner.load_state_dict(state)

"""Tar shards in the img2dataset / LAION layout (``key.jpg`` + ``key.txt`` [+ ``key.json``]).

Shard lists, splitting across ranks/workers and resampling use the ``webdataset`` library;
reading members and decoding do not. Only allowlisted members (jpg/jpeg/png/webp/txt/json)
are ever read, so ``.pyd``/``.pth``/``.pickle`` members are never unpickled; images go
through our own :func:`~tessera.data.image_io.load_image`, and a member larger than
``max_image_bytes`` / ``max_caption_bytes`` is not read at all (``file_too_large``).

Captions: the ``.txt`` member holds one caption per line (stripped, blank lines dropped; the
single line img2dataset writes is one caption; ``tessera data shapes --format webdataset``
writes several); without a ``.txt``, the ``.json`` member's ``"captions"`` list or
``"caption"`` string is used.

Errors are counted, never slept on: a bad sample is skipped under its reason; a shard whose
stream breaks is counted for that shard in ``report.shard_errors`` and the next shard
streams. A shard must end with the tar end-of-archive marker: one cut at a member boundary or
inside a member header (where Python's ``tarfile`` just stops, as if the archive had ended)
is counted as ``truncated_shard`` too. The sample being read when a shard broke is kept only
if it already has an image and a caption member; otherwise it is dropped *without* a
per-sample count (no ``caption_missing`` for a ``.txt`` that was cut off): the shard's
``truncated_shard`` already accounts for it. Every local shard is checked to exist (and be
non-empty) when the source is built, so a missing shard is an error before training starts,
not a hang.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
import tarfile
from collections.abc import Iterator, Sequence
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Any

from tessera.data.example import Example
from tessera.data.image_io import BadSampleError
from tessera.data.sources.base import Candidate, Source, parse_captions, share
from tessera.errors import DataError

__all__ = ["ALLOWED_EXTENSIONS", "WebDatasetSource", "expand_shards", "read_upstream_stats"]

ALLOWED_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "txt", "json"})
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSIONS = ("txt", "json")
_GLOB_CHARS = set("*?[")
_KEY_RE = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")  # webdataset's base_plus_ext
_META_RE = re.compile(r"__[^/]*__($|/)")  # webdataset's skip_meta


def _is_remote(url: str) -> bool:
    return "://" in url or url.startswith("pipe:")


def allowed_member(fname: str) -> bool:
    """True for tar members whose full extension (after the first dot of the base name) is
    in :data:`ALLOWED_EXTENSIONS`; everything else is never read."""
    base = fname.rsplit("/", 1)[-1]
    return "." in base and base.split(".", 1)[1].lower() in ALLOWED_EXTENSIONS


def expand_shards(urls: str | Sequence[str]) -> list[str]:
    """Shard list from a path, a brace pattern (``data/{00000..00009}.tar``), a glob
    (``data/*.tar``), a directory (its ``*.tar``) or a list of those; local shards must
    exist and be non-empty. Raises :class:`DataError` (before any streaming) otherwise."""
    import braceexpand  # a dependency of webdataset

    items = [urls] if isinstance(urls, str | os.PathLike) else list(urls)
    shards: list[str] = []
    for item in items:
        for url in braceexpand.braceexpand(os.fspath(item)):
            if _is_remote(url):
                shards.append(url)
            elif os.path.isdir(url):
                found = sorted(glob.glob(os.path.join(glob.escape(url), "*.tar")))
                if not found:
                    raise DataError(f"no .tar shards in directory {url}")
                shards.extend(found)
            elif _GLOB_CHARS & set(url):
                found = sorted(glob.glob(os.path.expanduser(url)))
                if not found:
                    raise DataError(f"no shards match {url}")
                shards.extend(found)
            else:
                shards.append(os.path.expanduser(url))
    if not shards:
        raise DataError(f"no shards given: {urls!r}")
    local = [s for s in shards if not _is_remote(s)]
    missing = [s for s in local if not os.path.isfile(s)]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise DataError(f"shard not found: {missing[0]}{more}")
    empty = [s for s in local if os.path.getsize(s) == 0]
    if empty:
        raise DataError(f"shard is empty (0 bytes): {empty[0]}")
    return shards


def read_upstream_stats(shard: str) -> dict[str, Any] | None:
    """img2dataset's per-shard failure counts: ``{shard}_stats.json`` if present, else the
    ``status`` column of ``{shard}.parquet`` (needs pyarrow), else None."""
    stem = shard[: -len(".tar")] if shard.endswith(".tar") else shard
    stats = Path(stem + "_stats.json")
    if stats.is_file():
        try:
            data = json.loads(stats.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return data if isinstance(data, dict) else None
    parquet = Path(stem + ".parquet")
    if parquet.is_file():
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return None
        try:
            status = pq.read_table(parquet, columns=["status"]).column("status").to_pylist()
        except Exception:  # a damaged side file must not stop the data
            return None
        out: dict[str, Any] = {"count": len(status)}
        for name in ("success", "failed_to_download", "failed_to_resize"):
            out["successes" if name == "success" else name] = status.count(name)
        return out
    return None


class WebDatasetSource(Source):
    """Examples streamed from tar shards; see the module docstring.

    urls: shard path, brace pattern, glob, directory of ``*.tar``, or a list of those.
    rank / world_size: explicit split (shards ``rank::world_size``); ``None`` reads them
      from ``torch.distributed`` / ``RANK``+``WORLD_SIZE`` (``webdataset.split_by_node``).
      DataLoader workers then split this rank's shards (like ``split_by_worker``).
    resampled: draw shards with replacement from this rank's (disjoint) shard subset,
      forever; ``epoch_length`` (examples per rank, required) ends each epoch, so every rank
      yields the same number of examples and batches (no DDP hang on uneven shards).
    shuffle_shards: shuffle the shard order each epoch (same order on every rank, so the
      split stays disjoint), seeded by ``(seed, epoch)``; see :meth:`set_epoch`.
    n: stop after this many examples per rank (non-resampled mode).
    """

    name = "wds"

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        rank: int | None = None,
        world_size: int | None = None,
        resampled: bool = False,
        epoch_length: int | None = None,
        shuffle_shards: bool = False,
        seed: int = 0,
        **kwargs: Any,
    ) -> None:
        self._auto_rank = rank is None and world_size is None
        if self._auto_rank:
            from webdataset.utils import pytorch_worker_info

            rank, world_size, _, _ = pytorch_worker_info()
        super().__init__(rank=rank or 0, world_size=world_size or 1, **kwargs)
        if resampled and (epoch_length is None or epoch_length < 1):
            raise DataError("resampled shards stream forever: pass epoch_length >= 1")
        self.urls = urls
        self.shards = expand_shards(urls)
        if not resampled and len(self.shards) < self.world_size:
            raise DataError(
                f"{len(self.shards)} shard(s) for {self.world_size} ranks: some ranks would get "
                "no data (use more shards, or resampled=True)"
            )
        self.resampled = resampled
        self.epoch_length = epoch_length
        self.shuffle_shards = shuffle_shards
        self.seed = seed
        self.epoch = 0
        for shard in self.shards:
            stats = read_upstream_stats(shard) if not _is_remote(shard) else None
            if stats is not None:
                self.report.add_upstream(stats)

    def describe(self) -> str:
        return f"{len(self.shards)} shard(s) from {self.urls!r}"

    def set_epoch(self, epoch: int) -> None:
        """Epoch number, mixed into the shard shuffle / resampling seed."""
        self.epoch = epoch

    def rank_shards(self) -> list[str]:
        """This rank's shards (in this epoch's order)."""
        shards = list(self.shards)
        if self.shuffle_shards:
            random.Random(f"{self.seed}:{self.epoch}").shuffle(shards)
        if self.resampled and len(shards) < self.world_size:
            return shards  # too few to split: every rank resamples all of them
        return shards[self.rank :: self.world_size]

    def candidates(self) -> Iterator[Candidate]:
        """All of this rank's samples, undecoded, in stream order (no worker split)."""
        shards = self._shard_stream(0, 1)
        if shards is not None:
            yield from self._candidates(iter(shards))

    def iter_partition(self, index: int, count: int) -> Iterator[Example]:
        import webdataset as wds

        shards = self._shard_stream(index, count)
        if shards is None:  # more DataLoader workers than shards: this one has none
            return self._limited(iter(()), None)
        stages: list[Any] = [shards, self._candidates, self._examples]
        pipeline = wds.DataPipeline(*stages)
        if self.resampled:
            # Every rank (and worker) yields exactly its share of epoch_length examples.
            quota = share(self.epoch_length, index, count) or 0
            return self._limited(iter(pipeline.with_epoch(quota)) if quota else iter(()), None)
        return self._limited(iter(pipeline), share(self.n, index, count))

    def _shard_stream(self, index: int, count: int) -> Any:
        """The webdataset shard-list stage for worker ``index`` of ``count`` on this rank."""
        import webdataset as wds

        if self.resampled:
            shards = self.rank_shards()
            return wds.ResampledShards(
                shards,
                seed=self.seed * 1_000_003 + self.epoch,
                worker_seed=lambda: self.rank * 1000 + index,
                deterministic=True,
            )
        if self._auto_rank and self.world_size > 1:
            shards = list(self.shards)
            if self.shuffle_shards:
                random.Random(f"{self.seed}:{self.epoch}").shuffle(shards)
            mine = list(wds.split_by_node({"url": s} for s in shards))
        else:
            mine = [{"url": s} for s in self.rank_shards()]
        urls = [d["url"] for d in islice(mine, index, None, count)]
        return wds.SimpleShardList(urls) if urls else None

    def _samples(self, shard_dicts: Any) -> Iterator[dict[str, Any]]:
        """Group allowlisted tar members into samples, shard by shard, counting shard errors.

        Raises :class:`DataError` when every shard of a pass fails (or, resampling, when
        shards keep failing) instead of streaming nothing forever.
        """
        from webdataset.gopen import gopen

        tried = failed_in_a_row = 0
        any_ok = False
        for src in shard_dicts:
            url = src["url"]
            tried += 1
            got = 0
            try:
                stream = gopen(url, "rb")
            except Exception as e:
                self.report.shard_error(url, "shard_unreadable", _first_line(e))
            else:
                try:
                    for sample in self._shard_samples(stream, url):
                        got += 1
                        yield sample
                finally:
                    stream.close()
            any_ok = any_ok or got > 0
            failed_in_a_row = 0 if got else failed_in_a_row + 1
            if self.resampled and failed_in_a_row >= max(10, 2 * len(self.shards)):
                raise DataError(
                    f"{failed_in_a_row} shards in a row gave no samples; see data report"
                )
        if tried and not any_ok and self.report.shard_errors:
            first = next(iter(self.report.shard_errors))
            raise DataError(f"all {tried} shard(s) failed to stream (first: {first})")

    def _shard_samples(self, stream: Any, url: str) -> Iterator[dict[str, Any]]:
        """Samples (``{"__key__", "__url__", ext: bytes, ...}``) of one shard's tar stream.

        Members are grouped by key (consecutive members with the same name up to the first
        dot). A shard that breaks, or ends without the end-of-archive marker, is counted once
        in ``report.shard_errors[url]``; see the module docstring for its trailing sample.
        """
        caps = {"image": self.config.max_image_bytes, "caption": self.config.max_caption_bytes}
        current: dict[str, Any] | None = None
        problem: tuple[str, str] | None = None
        try:
            with tarfile.open(fileobj=stream, mode="r|*", tarinfo=_EndRecordingTarInfo) as tar:
                for info in tar:
                    tar.members = []  # stream mode: keep no list of every member read
                    fname = info.name
                    if not info.isreg() or _is_meta(fname) or not allowed_member(fname):
                        continue
                    match = _KEY_RE.match(fname)
                    if match is None:
                        continue
                    prefix, suffix = match.group(1), match.group(2).lower()
                    cap = caps["caption" if suffix in CAPTION_EXTENSIONS else "image"]
                    if info.size > cap:
                        value: bytes | _TooLarge = _TooLarge(fname, info.size, cap)  # never read
                    else:
                        member = tar.extractfile(info)
                        value = member.read() if member is not None else b""
                    if current is None or prefix != current["__key__"]:
                        if current is not None:
                            yield current
                        current = {"__key__": prefix, "__url__": url}
                    if suffix in current:
                        self.report.shard_error(
                            url, "shard_member_error", f"duplicate member {fname}"
                        )
                        continue
                    current[suffix] = value
                problem = _end_problem(tar)
        except Exception as e:  # the tar stream broke: count it, go on to the next shard
            problem = (_stream_reason(e), _first_line(e))
        if problem is not None:
            self.report.shard_error(url, *problem)
        if current is not None and (problem is None or _has_image_and_caption(current)):
            yield current

    def _candidates(self, shard_dicts: Any) -> Iterator[Candidate]:
        for sample in self._samples(shard_dicts):
            shard = os.path.basename(str(sample.get("__url__", "")))
            if shard.endswith(".tar"):
                shard = shard[: -len(".tar")]
            image = next((sample[e] for e in IMAGE_EXTENSIONS if e in sample), None)
            caption = sample.get("txt", sample.get("json"))
            too_large = next((v for v in (image, caption) if isinstance(v, _TooLarge)), None)
            yield Candidate(
                key=f"{shard}/{sample['__key__']}",
                image=None if too_large is not None else image,
                captions=partial(_sample_captions, sample),
                error=too_large.error() if too_large is not None else None,
            )


class _TooLarge:
    """Stands for a tar member over the size cap (its bytes are never read)."""

    def __init__(self, name: str, size: int, cap: int) -> None:
        self.name, self.size, self.cap = name, size, cap

    def error(self) -> BadSampleError:
        return BadSampleError(
            "file_too_large", f"tar member {self.name}: {self.size} bytes exceeds {self.cap}"
        )


class _EndRecordingTarInfo(tarfile.TarInfo):
    """A TarInfo whose header reader records, on the TarFile, the header error that ended the
    member list. ``tarfile`` ends iteration quietly on an end-of-archive block (fine), but
    also on a missing or partial header (a truncated file) and, after the first member, on a
    garbage header; the record tells them apart."""

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        offset = tarfile_.offset
        try:
            return super().fromtarfile(tarfile_)
        except tarfile.HeaderError as e:
            tarfile_._tessera_end = (e, offset)  # type: ignore[attr-defined]
            raise


def _end_problem(tar: tarfile.TarFile) -> tuple[str, str] | None:
    """``(reason, detail)`` if the member list of ``tar`` ended other than at an
    end-of-archive block; None if the archive ended properly."""
    error, offset = getattr(tar, "_tessera_end", (None, tar.offset))
    if error is None or isinstance(error, tarfile.EOFHeaderError):
        return None
    if isinstance(error, tarfile.EmptyHeaderError):
        return "truncated_shard", f"archive ends at byte {offset} without an end-of-archive marker"
    if isinstance(error, tarfile.TruncatedHeaderError):
        return "truncated_shard", f"archive cut inside the member header at byte {offset}"
    return "corrupt_shard", f"invalid member header at byte {offset} ({error})"


def _is_meta(fname: str) -> bool:
    base_meta = "/" not in fname and fname.startswith("__") and fname.endswith("__")
    return base_meta or _META_RE.match(fname) is not None


def _has_image_and_caption(sample: dict[str, Any]) -> bool:
    return any(e in sample for e in IMAGE_EXTENSIONS) and any(
        e in sample for e in CAPTION_EXTENSIONS
    )


def _stream_reason(e: BaseException) -> str:
    text = str(e).lower()
    cut = ("unexpected end", "truncated header", "empty file", "ended before")
    if isinstance(e, tarfile.ReadError | EOFError) and any(c in text for c in cut):
        return "truncated_shard"
    if isinstance(e, tarfile.TarError | EOFError):
        return "corrupt_shard"
    if isinstance(e, OSError):
        return "shard_unreadable"
    return "shard_member_error"


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _sample_captions(sample: dict[str, Any]) -> tuple[str, ...]:
    """The ``.txt`` member, one caption per line (like a folder's caption file); without
    one, the ``.json`` member's ``"captions"`` list or ``"caption"`` string."""
    if "txt" in sample:
        return parse_captions(sample["txt"], one_per_line=True)
    if "json" in sample:
        try:
            meta = json.loads(sample["json"])
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta = None
        if isinstance(meta, dict):
            found = meta.get("captions")
            listed = found if isinstance(found, list) else [meta.get("caption")]
            captions = tuple(c.strip() for c in listed if isinstance(c, str) and c.strip())
            if captions:
                return captions
    raise BadSampleError("caption_missing", "sample has no .txt caption")

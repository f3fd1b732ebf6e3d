"""Bad-sample accounting: what a data source saw, skipped, repaired and filtered, and why.

A :class:`DataReport` travels with every source. Skips (unusable examples) count towards the
bad fraction, which aborts the run with :class:`~tessera.errors.TooManyBadSamplesError` once it
exceeds ``DataConfig.max_bad_fraction``; repairs (fixed on the fly) and filters (policy, e.g.
aspect ratio) are counted but are not "bad". Everything ends up in ``data_report.json``.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tessera.config.data import DataConfig
from tessera.errors import TooManyBadSamplesError

__all__ = ["REPORT_FILENAME", "DataReport"]

logger = logging.getLogger("tessera.data")

REPORT_FILENAME = "data_report.json"
_UPSTREAM_FIELDS = ("count", "successes", "failed_to_download", "failed_to_resize")


class DataReport:
    """Counters of one pass over a data source.

    seen: examples looked at (decoded or not); yielded: examples handed on.
    skipped / repaired / filtered: counts by reason (or filter name).
    shard_errors: per shard (webdataset), counts of stream-level errors by reason; these
      lose an unknown number of examples, so they do not enter :attr:`bad_fraction`.
    upstream: failure counts read from img2dataset ``*_stats.json`` files, summed.
    max_keys: how many example keys are kept per reason (for debugging), >= 0.
    """

    def __init__(self, config: DataConfig | None = None, *, max_keys: int = 10) -> None:
        self.config = config or DataConfig()
        self.max_keys = max_keys
        self.seen = 0
        self.yielded = 0
        self.skipped: Counter[str] = Counter()
        self.repaired: Counter[str] = Counter()
        self.filtered: Counter[str] = Counter()
        self.keys: dict[str, dict[str, list[str]]] = {"skipped": {}, "repaired": {}, "filtered": {}}
        self.shard_errors: dict[str, Counter[str]] = {}
        self.upstream: Counter[str] = Counter()
        self.upstream_shards = 0

    # -- recording ---------------------------------------------------------------------------
    def see(self, n: int = 1) -> None:
        """Count ``n`` examples looked at."""
        self.seen += n

    def record_yield(self, n: int = 1) -> None:
        """Count ``n`` examples handed on to the consumer."""
        self.yielded += n

    def skip(self, reason: str, key: str, detail: str = "") -> None:
        """Count an unusable example under ``reason``; raise if too many have been bad."""
        self.skipped[reason] += 1
        self._keep_key("skipped", reason, key)
        logger.debug("skip %s [%s]%s", key, reason, f": {detail}" if detail else "")
        self.check()

    def repair(self, reason: str, key: str) -> None:
        """Count a fix applied to an example (e.g. ``alpha_composited``)."""
        self.repaired[reason] += 1
        self._keep_key("repaired", reason, key)

    def filter(self, name: str, key: str) -> None:
        """Count an example removed by the filter ``name`` (policy, not a defect)."""
        self.filtered[name] += 1
        self._keep_key("filtered", name, key)
        logger.debug("filter %s [%s]", key, name)

    def shard_error(self, shard: str, reason: str, detail: str = "") -> None:
        """Count a stream-level error of one shard (truncated tar, unreadable shard, ...)."""
        self.shard_errors.setdefault(shard, Counter())[reason] += 1
        logger.warning("shard %s: %s%s", shard, reason, f" ({detail})" if detail else "")

    def add_upstream(self, stats: Mapping[str, Any]) -> None:
        """Add one img2dataset ``{shard}_stats.json`` (count, successes, failed_to_*)."""
        self.upstream_shards += 1
        for name in _UPSTREAM_FIELDS:
            value = stats.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                self.upstream[name] += value

    def _keep_key(self, kind: str, reason: str, key: str) -> None:
        keys = self.keys[kind].setdefault(reason, [])
        if len(keys) < self.max_keys:
            keys.append(key)

    # -- reading -----------------------------------------------------------------------------
    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    @property
    def bad_fraction(self) -> float:
        """Skipped / seen, in [0, 1] (0 before anything was seen)."""
        return self.n_skipped / self.seen if self.seen else 0.0

    def check(self) -> None:
        """Raise :class:`TooManyBadSamplesError` when the bad fraction is over the limit.

        Only after ``config.bad_fraction_min_seen`` examples, so a few early failures in a
        tiny sample cannot abort a run.
        """
        cfg = self.config
        if self.seen >= cfg.bad_fraction_min_seen and self.bad_fraction > cfg.max_bad_fraction:
            top = ", ".join(f"{r}={n}" for r, n in self.skipped.most_common(3))
            raise TooManyBadSamplesError(
                f"{self.n_skipped} of {self.seen} examples were unusable "
                f"({self.bad_fraction:.1%} > max_bad_fraction {cfg.max_bad_fraction:.1%}; {top})"
            )

    def merge(self, other: DataReport) -> None:
        """Add another report's counts into this one (e.g. from DataLoader workers)."""
        self.seen += other.seen
        self.yielded += other.yielded
        self.skipped.update(other.skipped)
        self.repaired.update(other.repaired)
        self.filtered.update(other.filtered)
        for kind, table in other.keys.items():
            for reason, keys in table.items():
                for key in keys:
                    self._keep_key(kind, reason, key)
        for shard, errors in other.shard_errors.items():
            self.shard_errors.setdefault(shard, Counter()).update(errors)
        self.upstream.update(other.upstream)
        self.upstream_shards += other.upstream_shards

    def summary(self) -> str:
        """One line: seen, yielded, skipped (top reasons), repaired, filtered."""

        def top(c: Counter[str]) -> str:
            return ", ".join(f"{k}={v}" for k, v in c.most_common(4)) or "-"

        line = (
            f"data: seen {self.seen}, yielded {self.yielded}, skipped {self.n_skipped} "
            f"({self.bad_fraction:.1%}: {top(self.skipped)}), repaired {top(self.repaired)}, "
            f"filtered {top(self.filtered)}"
        )
        if self.shard_errors:
            line += f", shard errors in {len(self.shard_errors)} shard(s)"
        if self.upstream_shards:
            line += (
                f", upstream failed_to_download={self.upstream['failed_to_download']}"
                f" failed_to_resize={self.upstream['failed_to_resize']}"
            )
        return line

    def log_summary(self) -> None:
        """Log :meth:`summary` at INFO on the ``tessera.data`` logger."""
        logger.info(self.summary())

    def to_dict(self) -> dict[str, Any]:
        return {
            "seen": self.seen,
            "yielded": self.yielded,
            "skipped_total": self.n_skipped,
            "bad_fraction": self.bad_fraction,
            "max_bad_fraction": self.config.max_bad_fraction,
            "skipped": dict(sorted(self.skipped.items())),
            "repaired": dict(sorted(self.repaired.items())),
            "filtered": dict(sorted(self.filtered.items())),
            "example_keys": {k: dict(sorted(v.items())) for k, v in self.keys.items()},
            "shard_errors": {
                s: dict(sorted(c.items())) for s, c in sorted(self.shard_errors.items())
            },
            "upstream": (
                {"shards": self.upstream_shards, **{f: self.upstream[f] for f in _UPSTREAM_FIELDS}}
                if self.upstream_shards
                else {}
            ),
        }

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON into a file, or a directory's ``data_report.json``."""
        path = Path(path)
        if path.is_dir() or not path.suffix:
            path = path / REPORT_FILENAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"DataReport({self.summary()})"

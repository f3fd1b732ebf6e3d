"""Bad-sample accounting: what a data source saw, skipped, repaired and filtered, and why.

A :class:`DataReport` travels with every source. Skips (unusable examples) count towards the
bad fraction, which aborts the run with :class:`~tessera.errors.TooManyBadSamplesError` once it
exceeds ``DataConfig.max_bad_fraction``; repairs (fixed on the fly) and filters (policy, e.g.
aspect ratio) are counted but are not "bad". Everything ends up in ``data_report.json``.

DataLoader workers. Each worker process counts into its own report; its counts travel to the
main process with the batches, as a :class:`ReportDelta` under ``batch["data_report"]`` (see
:class:`~tessera.data.transforms.ImageTextDataset`). A delta merges itself into the
main-process report it came from when the main process unpickles the batch, and the bad
fraction is then checked there, on the merged totals of all workers. So after a DataLoader
pass, the user's ``source.report`` holds the counts of every worker.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import uuid
import weakref
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from tessera.config.data import DataConfig
from tessera.errors import TooManyBadSamplesError

__all__ = ["REPORT_FILENAME", "REPORT_KEY", "DataReport", "ReportDelta"]

logger = logging.getLogger("tessera.data")

REPORT_FILENAME = "data_report.json"
REPORT_KEY = "data_report"  # where worker counts ride in items and batches
_UPSTREAM_FIELDS = ("count", "successes", "failed_to_download", "failed_to_resize")

# Main-process reports by uid, so that a worker's counts find their way home.
_REPORTS: weakref.WeakValueDictionary[str, DataReport] = weakref.WeakValueDictionary()
_MERGE_LOCK = threading.Lock()  # batches may be unpickled in a pin-memory thread


class DataReport:
    """Counters of one pass over a data source.

    seen: examples looked at (decoded or not); yielded: examples handed on.
    skipped / repaired / filtered: counts by reason (or filter name).
    shard_errors: per shard (webdataset), counts of stream-level errors by reason; these
      lose an unknown number of examples, so they do not enter :attr:`bad_fraction`.
    upstream: failure counts read from img2dataset ``*_stats.json`` files, summed.
    max_keys: how many example keys are kept per reason (for debugging), >= 0.
    forward_to: set on a DataLoader worker's report: the uid of the main-process report its
      counts are sent to (see the module docstring); None for an ordinary report.
    """

    def __init__(self, config: DataConfig | None = None, *, max_keys: int = 10) -> None:
        self.config = config or _default_config()
        self.max_keys = max_keys
        # A copy (a spawned DataLoader worker's, by pickling) keeps the uid, so counts can be
        # sent back to this report; only the original is registered.
        self.uid = uuid.uuid4().hex
        self.forward_to: str | None = None
        self.workers_finished = 0
        _REPORTS[self.uid] = self
        self._reset()

    def _reset(self) -> None:
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
        tiny sample cannot abort a run. On a DataLoader worker's report (whose counts are sent
        on with every example it hands on) this checks the examples seen since the worker's
        last usable one: a long run of unusable examples cannot wait for an example to carry
        its counts to the main process, which checks the merged totals.
        """
        cfg = self.config
        if self.seen >= cfg.bad_fraction_min_seen and self.bad_fraction > cfg.max_bad_fraction:
            top = ", ".join(f"{r}={n}" for r, n in self.skipped.most_common(3))
            where = " in a row in one DataLoader worker" if self.forward_to is not None else ""
            raise TooManyBadSamplesError(
                f"{self.n_skipped} of {self.seen} examples{where} were unusable "
                f"({self.bad_fraction:.1%} > max_bad_fraction {cfg.max_bad_fraction:.1%}; {top})"
            )

    def merge(self, other: DataReport) -> None:
        """Add another report's counts into this one."""
        self.merge_state(other.state())

    def state(self) -> dict[str, Any]:
        """The counts as plain picklable data (no config); see :meth:`merge_state`."""
        return {
            "seen": self.seen,
            "yielded": self.yielded,
            "skipped": dict(self.skipped),
            "repaired": dict(self.repaired),
            "filtered": dict(self.filtered),
            "keys": {k: {r: list(v) for r, v in t.items()} for k, t in self.keys.items()},
            "shard_errors": {s: dict(c) for s, c in self.shard_errors.items()},
            "upstream": dict(self.upstream),
            "upstream_shards": self.upstream_shards,
        }

    def merge_state(self, state: Mapping[str, Any]) -> None:
        """Add counts from :meth:`state` (of another report) into this one."""
        self.seen += state["seen"]
        self.yielded += state["yielded"]
        self.skipped.update(state["skipped"])
        self.repaired.update(state["repaired"])
        self.filtered.update(state["filtered"])
        for kind, table in state["keys"].items():
            for reason, keys in table.items():
                for key in keys:
                    self._keep_key(kind, reason, key)
        for shard, errors in state["shard_errors"].items():
            self.shard_errors.setdefault(shard, Counter()).update(errors)
        self.upstream.update(state["upstream"])
        self.upstream_shards += state["upstream_shards"]

    def is_empty(self) -> bool:
        """True if nothing has been counted."""
        return not (
            self.seen
            or self.yielded
            or self.skipped
            or self.repaired
            or self.filtered
            or self.shard_errors
            or self.upstream_shards
        )

    def take_state(self) -> dict[str, Any]:
        """:meth:`state`, then reset every count to zero (a worker sending its counts on)."""
        state = self.state()
        self._reset()
        return state

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
        """Log :meth:`summary` at INFO on the ``tessera.data`` logger (at DEBUG for a
        DataLoader worker's report: the main process logs the merged one)."""
        logger.log(logging.DEBUG if self.forward_to else logging.INFO, self.summary())

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


@functools.cache
def _default_config() -> DataConfig:
    return DataConfig()  # frozen: one instance serves every report without a config


class ReportDelta:
    """Counts of one DataLoader worker on their way to the main-process report ``target``.

    Created in a worker by :class:`~tessera.data.transforms.ImageTextDataset`; merged into
    the target report when unpickled in another process that holds it (the main process
    receiving a batch), exactly once. The merged report is then checked; an over-the-limit
    bad fraction raises :class:`TooManyBadSamplesError` right there (the DataLoader passes it
    on to the training loop), or, if the batch is unpickled in a pin-memory thread, from
    :meth:`pin_memory`, which the DataLoader calls next in that thread.

    final: the worker's last delta of a pass (its end of epoch). workers: the DataLoader's
    number of workers (the main process logs the merged summary once all have finished).
    """

    __slots__ = ("absorbed", "error", "final", "origin_pid", "state", "target", "workers")

    def __init__(
        self, target: str, state: dict[str, Any], *, final: bool = False, workers: int = 1
    ) -> None:
        self.target = target
        self.state = state
        self.final = final
        self.workers = workers
        self.origin_pid = os.getpid()
        self.absorbed = False
        self.error: TooManyBadSamplesError | None = None

    @classmethod
    def combine(cls, deltas: Iterable[ReportDelta]) -> ReportDelta:
        """One delta holding the counts of several (of the same worker, e.g. a batch's)."""
        deltas = list(deltas)
        total = DataReport(max_keys=1 << 30)
        for d in deltas:
            total.merge_state(d.state)
        first = deltas[0]
        out = cls(
            first.target,
            total.state(),
            final=any(d.final for d in deltas),
            workers=first.workers,
        )
        out.absorbed = any(d.absorbed for d in deltas)
        return out

    def __reduce__(self) -> tuple[Any, ...]:
        args = (self.target, self.state, self.final, self.workers, self.origin_pid)
        return (_absorb, (*args, self.absorbed))

    def pin_memory(self, *args: Any, **kwargs: Any) -> ReportDelta:
        if self.error is not None:
            raise self.error
        return self

    def __repr__(self) -> str:
        seen, skipped = self.state["seen"], sum(self.state["skipped"].values())
        return f"ReportDelta(seen={seen}, skipped={skipped}, final={self.final})"


def _absorb(
    target: str,
    state: dict[str, Any],
    final: bool,
    workers: int,
    origin_pid: int,
    absorbed: bool,
) -> ReportDelta:
    """Unpickle a :class:`ReportDelta`, merging it into its target report if this process
    holds that report and the delta has not been merged yet."""
    delta = ReportDelta(target, state, final=final, workers=workers)
    delta.origin_pid = origin_pid
    delta.absorbed = absorbed
    report = _REPORTS.get(target)
    if absorbed or report is None or os.getpid() == origin_pid:
        return delta
    delta.absorbed = True
    with _MERGE_LOCK:
        report.merge_state(state)
        if final:
            report.workers_finished += 1
            done = report.workers_finished % max(workers, 1) == 0
    if final and done:
        report.log_summary()
    try:
        report.check()
    except TooManyBadSamplesError as e:
        if threading.current_thread() is threading.main_thread():
            raise
        delta.error = e
    return delta

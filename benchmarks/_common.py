"""Helpers shared by the benchmarks: the contamination guard of ../shared/bench/README.md.

``foreign_cpu_frac`` is the share of the machine's CPU that *other* processes used while a
measurement ran: (machine busy CPU-s from /proc/stat - this process's CPU-s) / (wall-s *
cores). On the shared 2-core machine anything above ~0.05 means the timing is contaminated
(2 OpenMP threads plus a competitor slow small-op workloads far more than the share taken).
"""

from __future__ import annotations

import os
import time


def _machine_busy_s() -> float | None:
    """CPU-seconds used by every process on this machine so far (/proc/stat), or None."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def wait_quiet(max_wait_s: float, threshold: float, window_s: float = 2.0) -> float | None:
    """Sleep until other processes use < ``threshold`` of the machine over ``window_s``
    (or ``max_wait_s`` passed); return the last foreign share seen (None: no /proc/stat,
    or ``max_wait_s <= 0``, which returns at once)."""
    if max_wait_s <= 0:
        return None
    deadline = time.monotonic() + max_wait_s
    while True:
        b0 = _machine_busy_s()
        time.sleep(window_s)
        b1 = _machine_busy_s()
        if b0 is None or b1 is None:
            return None
        share = (b1 - b0) / (window_s * (os.cpu_count() or 1))
        if share < threshold or time.monotonic() > deadline:
            return share


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class Contention:
    """``with Contention() as c: ...`` then ``c.foreign`` (the foreign share, or None),
    ``c.wall`` (seconds) and ``c.own_cpu`` (this process's CPU-s); as the peer's guard."""

    def __enter__(self):
        self.t, self.busy, self.own = time.perf_counter(), _machine_busy_s(), _own_cpu_s()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t
        busy = _machine_busy_s()
        self.own_cpu = _own_cpu_s() - self.own
        if self.busy is None or busy is None or self.wall <= 0:
            self.foreign = None
        else:
            foreign = max(0.0, (busy - self.busy) - self.own_cpu)
            self.foreign = foreign / (self.wall * (os.cpu_count() or 1))
        return False

"""One generation at a time per model, a bounded queue in front of it, and a time limit.

Each loaded model owns a :class:`ModelSlot`: a single worker thread (so one generation runs
on the device at a time) and room for ``queue_size`` waiting requests. A request that finds
the slot full is refused at once with :class:`Busy` (the server's 429) and an estimate of
when to retry. A request past its deadline while still queued is dropped before it runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import math
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Busy", "Job", "ModelSlot", "TimeLimit"]


class Busy(Exception):
    """The model's queue is full; ``retry_after`` is a whole number of seconds."""

    def __init__(self, model: str, retry_after: int) -> None:
        super().__init__(f"model {model!r} is busy (queue full); retry in {retry_after} s")
        self.retry_after = retry_after


class TimeLimit(Exception):
    """The request ran past the server's per-request time limit."""

    def __init__(self, limit_s: float) -> None:
        super().__init__(f"the request took longer than the {limit_s:g} s limit")


@dataclasses.dataclass(eq=False)
class Job:
    """A queued or running generation; ``state`` is queued, running or done."""

    fn: Callable[[], Any]
    deadline: float
    cost: float
    submitted: float = dataclasses.field(default_factory=time.monotonic)
    started: float | None = None
    state: str = "queued"
    future: concurrent.futures.Future[Any] | None = None


class ModelSlot:
    """The worker thread and bounded queue of one model."""

    def __init__(self, name: str, *, queue_size: int, timeout_s: float) -> None:
        self.name = name
        self.queue_size = queue_size
        self.timeout_s = timeout_s
        self._executor = concurrent.futures.ThreadPoolExecutor(1, f"tessera-serve-{name}")
        self._lock = threading.Lock()
        self._jobs: list[Job] = []  # running first, then waiting, in order
        self.seconds_per_cost = 0.05  # running estimate, for progress and Retry-After
        self.served = 0

    # -- admission ---------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._jobs)

    def position(self, job: Job) -> int:
        """How many jobs run or wait ahead of ``job`` (0: it is running or next)."""
        with self._lock:
            return self._jobs.index(job) if job in self._jobs else 0

    def estimate_s(self, cost: float) -> float:
        return self.seconds_per_cost * cost

    def submit(self, fn: Callable[[], Any], *, cost: float = 1.0) -> Job:
        """Queue ``fn`` (run on the worker thread) or raise :class:`Busy`."""
        now = time.monotonic()
        job = Job(fn, deadline=now + self.timeout_s, cost=cost, submitted=now)
        with self._lock:
            if len(self._jobs) >= 1 + self.queue_size:
                ahead = sum(j.cost for j in self._jobs)
                raise Busy(self.name, max(1, math.ceil(self.seconds_per_cost * ahead)))
            self._jobs.append(job)
        job.future = self._executor.submit(self._run, job)
        job.future.add_done_callback(lambda _f: self._release(job))
        return job

    def _release(self, job: Job) -> None:
        job.state = "done"
        with self._lock:
            if job in self._jobs:
                self._jobs.remove(job)

    def _run(self, job: Job) -> Any:
        if time.monotonic() > job.deadline:
            raise TimeLimit(self.timeout_s)
        job.state, job.started = "running", time.monotonic()
        result = job.fn()
        took = time.monotonic() - job.started
        with self._lock:
            per = took / max(job.cost, 1e-9)
            self.seconds_per_cost = (
                per if not self.served else 0.7 * self.seconds_per_cost + 0.3 * per
            )
            self.served += 1
        return result

    # -- waiting -----------------------------------------------------------------------------
    async def wait(self, job: Job) -> Any:
        """The job's result; raises :class:`TimeLimit` once its deadline passes (a queued job
        is then cancelled; a running one finishes on its thread, its result unused)."""
        assert job.future is not None
        fut = asyncio.wrap_future(job.future)
        remaining = job.deadline - time.monotonic()
        try:
            return await asyncio.wait_for(fut, max(remaining, 0.001))
        except TimeoutError:
            raise TimeLimit(self.timeout_s) from None

    def progress(self, job: Job) -> dict[str, Any]:
        """What the page shows while it waits: state, place in the queue, a rough fraction."""
        now = time.monotonic()
        out: dict[str, Any] = {"state": job.state, "elapsed_s": round(now - job.submitted, 2)}
        if job.state == "queued":
            out["position"] = self.position(job)
        elif job.state == "running" and job.started is not None:
            est = max(self.estimate_s(job.cost), 1e-3)
            out["fraction"] = round(min(0.95, (now - job.started) / est), 3)
        return out

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

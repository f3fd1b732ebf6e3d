"""Schedules as pure functions of the update step (learning rate, KL weight, temperature).

Every function maps an integer step >= 0 to a float, with no state, so a resumed run gets the
same value as an uninterrupted one and tests can check values by hand.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def cosine(step: int, *, start: float, end: float, steps: int, offset: int = 0) -> float:
    """Cosine interpolation from ``start`` (at ``offset``) to ``end`` (at ``offset + steps``).

    Constant at ``start`` before ``offset`` and at ``end`` afterwards. Used by the paper for the
    dVAE step size (1e-4 -> 1.25e-6 over 1.2M updates), KL weight (0 -> 6.6 over 5k updates)
    and gumbel temperature (1 -> 1/16 over 150k updates).
    """
    if steps <= 0:
        return end if step >= offset else start
    t = min(max(step - offset, 0), steps) / steps
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))


def linear_warmup(step: int, *, peak: float, warmup: int) -> float:
    """Linear ramp to ``peak`` over ``warmup`` updates (value at step 0 is ``peak / warmup``)."""
    if warmup <= 0:
        return peak
    return peak * min(1.0, (step + 1) / warmup)


def halvings(step: int, *, peak: float, warmup: int, milestones: Sequence[int]) -> float:
    """The DALL·E transformer schedule: warm up linearly, then halve at each milestone step.

    The paper halved five times when the loss plateaued; here the plateaus are given as
    ``milestones`` (sorted update steps) so the schedule stays a pure function.
    """
    n = bisect.bisect_right(sorted(milestones), step)
    return linear_warmup(step, peak=peak, warmup=warmup) * 0.5**n


def warmup_cosine(step: int, *, peak: float, end: float, warmup: int, steps: int) -> float:
    """Linear warm-up to ``peak``, then cosine decay to ``end`` at ``steps`` (total updates)."""
    if step < warmup:
        return linear_warmup(step, peak=peak, warmup=warmup)
    return cosine(step, start=peak, end=end, steps=max(steps - warmup, 0), offset=warmup)

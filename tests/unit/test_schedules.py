"""Schedules are pure functions of the step, checked against hand-computed values."""

import math

import pytest

from tessera.training.schedules import cosine, halvings, linear_warmup, warmup_cosine


def test_cosine_endpoints_and_midpoint():
    kw = dict(start=1e-4, end=1.25e-6, steps=1_200_000)
    assert cosine(0, **kw) == pytest.approx(1e-4)
    assert cosine(600_000, **kw) == pytest.approx((1e-4 + 1.25e-6) / 2)
    assert cosine(1_200_000, **kw) == pytest.approx(1.25e-6)
    assert cosine(5_000_000, **kw) == pytest.approx(1.25e-6)


def test_paper_kl_and_temperature_schedules():
    # beta 0 -> 6.6 over the first 5k updates, then constant; tau 1 -> 1/16 over 150k.
    assert cosine(0, start=0.0, end=6.6, steps=5000) == 0.0
    assert cosine(2500, start=0.0, end=6.6, steps=5000) == pytest.approx(3.3)
    assert cosine(10_000, start=0.0, end=6.6, steps=5000) == pytest.approx(6.6)
    tau = cosine(37_500, start=1.0, end=1 / 16, steps=150_000)
    assert tau == pytest.approx(1 / 16 + (1 - 1 / 16) * 0.5 * (1 + math.cos(math.pi / 4)))


def test_offset_holds_start_value():
    assert cosine(3, start=2.0, end=0.0, steps=10, offset=5) == 2.0
    assert cosine(10, start=2.0, end=0.0, steps=10, offset=5) == pytest.approx(1.0)


def test_warmup_and_halvings():
    assert linear_warmup(0, peak=4.5e-4, warmup=5000) == pytest.approx(4.5e-4 / 5000)
    assert linear_warmup(4999, peak=4.5e-4, warmup=5000) == pytest.approx(4.5e-4)
    ms = [10_000, 20_000, 30_000, 40_000, 50_000]
    assert halvings(9_999, peak=4.5e-4, warmup=5000, milestones=ms) == pytest.approx(4.5e-4)
    assert halvings(10_000, peak=4.5e-4, warmup=5000, milestones=ms) == pytest.approx(2.25e-4)
    assert halvings(60_000, peak=4.5e-4, warmup=5000, milestones=ms) == pytest.approx(4.5e-4 / 32)


def test_warmup_cosine():
    assert warmup_cosine(0, peak=1.0, end=0.0, warmup=10, steps=110) == pytest.approx(0.1)
    assert warmup_cosine(10, peak=1.0, end=0.0, warmup=10, steps=110) == pytest.approx(1.0)
    assert warmup_cosine(60, peak=1.0, end=0.0, warmup=10, steps=110) == pytest.approx(0.5)
    assert warmup_cosine(110, peak=1.0, end=0.0, warmup=10, steps=110) == pytest.approx(0.0)

"""The benchmarks' median interval (bench/runtime/intervals.py): exact coverage, the order
statistics it picks, the verdicts and the adaptive stop rule."""
from __future__ import annotations

import random

import pytest

from bench.runtime.intervals import median_interval, settled, verdict_at_least, verdict_at_most


def test_too_few_values_give_no_95_percent_interval() -> None:
    # [min, max] of 5 values covers the median with 1 - 2/32 = 93.75 % only
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0]) is None
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0], confidence=0.9) is not None


def test_six_values_give_min_max_at_96_9_percent() -> None:
    iv = median_interval([0.9, 1.3, 1.0, 1.1, 1.2, 0.95])
    assert iv is not None
    assert (iv.low, iv.high, iv.n) == (0.9, 1.3, 6)
    assert iv.coverage == pytest.approx(1 - 2 / 64)


def test_twenty_values_pick_the_6th_and_15th_order_statistics() -> None:
    # binomial(20, 1/2): P(X <= 5) = 0.0207 <= 0.025 < P(X <= 6) = 0.0577
    iv = median_interval([float(i) for i in range(1, 21)][::-1])
    assert iv is not None
    assert (iv.low, iv.high) == (6.0, 15.0)
    assert iv.coverage == pytest.approx(1 - 2 * 21700 / 2**20)
    assert iv.width == 9.0


def test_coverage_holds_for_a_skewed_distribution() -> None:
    rng = random.Random(15)
    true_median = 1.0  # lognormal(0, s) has median 1
    hits = 0
    trials = 2000
    for _ in range(trials):
        iv = median_interval([rng.lognormvariate(0.0, 0.5) for _ in range(12)])
        assert iv is not None
        hits += iv.low <= true_median <= iv.high
    assert hits / trials >= 0.95 - 0.015


def test_verdicts_need_the_whole_interval_on_one_side() -> None:
    iv = median_interval([1.01, 1.02, 1.03, 1.04, 1.05, 1.06])
    assert verdict_at_least(iv, 1.0) == "met"
    assert verdict_at_least(iv, 1.07) == "MISSED"
    assert verdict_at_least(iv, 1.03) == "unsettled"
    assert verdict_at_most(iv, 1.06) == "met"
    assert verdict_at_most(iv, 1.0) == "MISSED"
    assert verdict_at_least(None, 1.0).startswith("unsettled")


def test_adaptive_stop_on_width_or_cap() -> None:
    tight = [1.0, 1.001, 0.999, 1.002, 0.998, 1.0]
    assert settled(tight, width=0.01, cap=50)
    assert not settled(tight[:5], width=0.01, cap=50)  # min_n first
    wide = [0.8, 1.2, 0.9, 1.1, 1.0, 0.85]
    assert not settled(wide, width=0.01, cap=50)
    assert settled(wide, width=0.01, cap=6)
    assert not settled(wide, width=0.0, cap=7)  # width 0: a fixed number of pairs

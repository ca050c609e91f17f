"""Confidence intervals for the median of per-round ratios, and when to stop adding rounds.

Why the sign-test (order-statistic) interval: the benchmarks compare two paths measured a few
seconds apart on a shared machine, whose background load makes the per-round ratios skewed and
heavy-tailed (a single busy second moves one round by 20 %). The interval for the median built
from the binomial distribution of the sign test assumes nothing about their distribution, only
that the rounds are independent, and its coverage is exact (printed with it), where a bootstrap
would be approximate for the handful of rounds a run has. It is deterministic: two readers of
one run get the same interval.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Interval:
    """[low, high] covers the median with probability `coverage` (>= the confidence asked for)."""

    low: float
    high: float
    coverage: float
    n: int

    @property
    def width(self) -> float:
        return self.high - self.low

    def __str__(self) -> str:
        return f"[{self.low:.3f}, {self.high:.3f}] ({self.coverage * 100:.1f}%, n={self.n})"


def _binom_cdf_half(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2**n


def median_interval(values: Sequence[float], confidence: float = 0.95) -> Interval | None:
    """The sign-test interval [x_(k), x_(n-k+1)] of the sorted values, with the largest k whose
    two-sided coverage 1 - 2 P(X <= k-1) is still >= `confidence`. None when even [min, max]
    does not reach it (fewer than 6 values for 95 %)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must lie in (0, 1)")
    xs = sorted(values)
    n = len(xs)
    best = 0
    for k in range(1, n // 2 + 1):
        if 1 - 2 * _binom_cdf_half(k - 1, n) >= confidence:
            best = k
        else:
            break
    if best == 0:
        return None
    return Interval(xs[best - 1], xs[n - best], 1 - 2 * _binom_cdf_half(best - 1, n), n)


def verdict_at_least(interval: Interval | None, bound: float) -> str:
    """'met' when the whole interval is >= bound, 'missed' when all of it is below, else
    'unsettled' (also when there are too few rounds for an interval)."""
    if interval is None:
        return "unsettled (too few rounds for an interval)"
    if interval.low >= bound:
        return "met"
    if interval.high < bound:
        return "MISSED"
    return "unsettled"


def verdict_at_most(interval: Interval | None, bound: float) -> str:
    """The mirror of verdict_at_least: 'met' when the whole interval is <= bound."""
    if interval is None:
        return "unsettled (too few rounds for an interval)"
    if interval.high <= bound:
        return "met"
    if interval.low > bound:
        return "MISSED"
    return "unsettled"


def settled(values: Sequence[float], width: float, cap: int, confidence: float = 0.95,
            min_n: int = 6) -> bool:
    """Whether an adaptive run may stop adding pairs: the interval of the median is narrower
    than `width`, or `cap` pairs are reached (min_n pairs first, whatever the width)."""
    if len(values) >= cap:
        return True
    if len(values) < min_n or width <= 0:
        return False
    iv = median_interval(values, confidence)
    return iv is not None and iv.width < width

"""Confidence intervals for the two kinds of claim recipes make: a mean over units, and a rate.

A claim is a number with its interval and n. Means over units (prompt x seed x noise sample) get
Student-t intervals; hit rates (the share of images in which the judge sees van gogh) get Wilson
score intervals, which stay inside [0, 1] and are sensible at 0% and 100%. No SciPy: the t
quantiles come from a table (exact to 3 decimals), interpolated in 1/df beyond it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95
Z95 = 1.959964  # two-sided 95% normal quantile
# Two-sided 95% Student-t quantiles t_{0.975, df}, df = 1 .. 30.
_T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
_T95_TAIL = ((30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980), (math.inf, Z95))


def t95(df: int) -> float:
    """The two-sided 95% Student-t quantile for `df` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"a t interval needs df >= 1 (two or more units), got df={df}")
    if df <= len(_T95):
        return _T95[df - 1]
    for (lo, t_lo), (hi, t_hi) in zip(_T95_TAIL, _T95_TAIL[1:]):
        if df <= hi:  # linear in 1/df, the usual table interpolation
            w = (1 / lo - 1 / df) / (1 / lo - (0 if hi == math.inf else 1 / hi))
            return t_lo + w * (t_hi - t_lo)
    return Z95


@dataclass(frozen=True)
class Interval:
    """A point estimate with its 95% interval [low, high] from n observations."""

    value: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def __str__(self) -> str:
        return f"{self.value:.3f} [{self.low:.3f}, {self.high:.3f}] (n={self.n})"

    def percent(self) -> str:
        """As a rate in percent: '4.7% [2.1, 10.0] (n=128)'."""
        return f"{100 * self.value:.1f}% [{100 * self.low:.1f}, {100 * self.high:.1f}] (n={self.n})"


def mean_interval(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(mean, low, high, n) along `axis`, NaN skipped: a Student-t 95% interval per cell.

    A cell with one value has low = high = its value (no spread can be known); an all-NaN cell is
    NaN with n = 0.
    """
    values = np.asarray(values, dtype=np.float64)
    n = np.sum(~np.isnan(values), axis=axis)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(values, axis=axis)
        sd = np.nanstd(values, axis=axis, ddof=1)
    t = np.vectorize(lambda k: t95(int(k) - 1) if k >= 2 else 0.0, otypes=[float])(n)
    half = np.where(n >= 2, t * np.nan_to_num(sd) / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, mean - half, mean + half, n


def interval(values: np.ndarray) -> Interval:
    """The mean of a 1-D sample with its Student-t 95% interval."""
    mean, low, high, n = mean_interval(np.ravel(values))
    return Interval(float(mean), float(low), float(high), int(n))


def wilson(hits: int, n: int) -> Interval:
    """A rate hits / n with its Wilson score 95% interval."""
    if n < 1:
        raise ValueError("a rate needs at least one observation")
    if not 0 <= hits <= n:
        raise ValueError(f"hits must lie in 0 .. n, got {hits} of {n}")
    p, z2 = hits / n, Z95**2
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    low = 0.0 if hits == 0 else max(0.0, center - half)  # exact at the ends despite rounding
    high = 1.0 if hits == n else min(1.0, center + half)
    return Interval(p, low, high, n)

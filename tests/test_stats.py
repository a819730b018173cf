"""Interval arithmetic against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from interp.stats import interval, mean_interval, t95, wilson


def test_t_interval_matches_a_hand_computation() -> None:
    values = [0.2, 0.4, 0.9, 0.5]  # mean 0.5, sample sd sqrt(0.26 / 3), t_{0.975, 3} = 3.182
    half = 3.182 * math.sqrt(0.26 / 3) / 2
    found = interval(values)
    assert (found.value, found.n) == (pytest.approx(0.5), 4)
    assert (found.low, found.high) == (pytest.approx(0.5 - half), pytest.approx(0.5 + half))


def test_mean_interval_skips_nan_per_cell_and_one_value_has_no_width() -> None:
    grid = np.array([[1.0, np.nan, 2.0], [3.0, np.nan, np.nan]])
    mean, low, high, n = mean_interval(grid)
    assert n.tolist() == [2, 0, 1]
    assert mean[0] == 2.0 and np.isnan(mean[1]) and low[2] == high[2] == 2.0
    assert high[0] - mean[0] == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2))


def test_wilson_matches_a_hand_computation_and_stays_in_range() -> None:
    z = 1.959964
    p, n = 3 / 128, 128
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    found = wilson(3, 128)
    assert (found.low, found.high) == (pytest.approx(center - half), pytest.approx(center + half))
    assert wilson(0, 10).low == 0.0 and wilson(10, 10).high == 1.0 and wilson(0, 10).high > 0.2
    assert "2.3% [" in found.percent()


def test_t_quantiles_interpolate_past_the_table_and_reject_bad_input() -> None:
    assert t95(30) == 2.042 and t95(1000) == pytest.approx(1.962, abs=2e-3) and 2.000 < t95(50) < 2.021
    with pytest.raises(ValueError, match="df >= 1"):
        t95(0)
    with pytest.raises(ValueError, match="hits must lie"):
        wilson(5, 4)

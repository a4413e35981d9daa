"""Streaming normalisation and the uncertainty formula, against hand-computed values."""

from __future__ import annotations

import math

import numpy as np

from soundmap.query.normalize import RunningRange, Scale, StreamingHistogram, sigma_l1


def test_running_range_ignores_nan_and_spans_all_windows() -> None:
    value_range = RunningRange()
    value_range.update(np.array([[np.nan, -2.0], [0.5, np.nan]], dtype=np.float32))
    value_range.update(np.array([3.0, np.nan], dtype=np.float32))
    value_range.update(np.array([np.nan], dtype=np.float32))
    assert (value_range.low, value_range.high, value_range.count) == (-2.0, 3.0, 3)


def test_minmax_scale_by_hand() -> None:
    scale = Scale(low=-2.0, high=3.0, method="minmax")
    out = scale.apply(np.array([-2.0, 0.5, 3.0, 4.0, np.nan]))
    # (v + 2) / 5: 0, 0.5, 1, clipped 1, NaN stays NaN
    np.testing.assert_allclose(out[:4], [0.0, 0.5, 1.0, 1.0])
    assert math.isnan(out[4]) and out.dtype == np.float32


def test_constant_map_is_zero_not_nan() -> None:
    out = Scale(1.0, 1.0, "minmax").apply(np.array([1.0, np.nan]))
    assert out[0] == 0.0 and math.isnan(out[1])


def test_histogram_percentile_matches_exact_percentile_within_one_bin() -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(size=100_000) ** 3  # skewed, heavy tails
    histogram = StreamingHistogram(float(values.min()), float(values.max()))
    for part in np.array_split(values, 37):  # streamed in uneven windows
        histogram.update(part)
    bin_width = (values.max() - values.min()) / histogram.bins
    for q in (2.0, 50.0, 98.0):
        assert abs(histogram.percentile(q) - np.percentile(values, q)) <= bin_width


def test_histogram_percentile_small_case_by_hand() -> None:
    # 0..100 in steps of 1: numpy's 2nd percentile is 2.0 and the 98th is 98.0
    histogram = StreamingHistogram(0.0, 100.0, bins=100_000)
    histogram.update(np.arange(101, dtype=np.float64))
    assert abs(histogram.percentile(2.0) - 2.0) < 1e-2
    assert abs(histogram.percentile(98.0) - 98.0) < 1e-2


def test_sigma_l1_is_the_sum_of_standard_deviations() -> None:
    # log σ² = [0, 2 ln 2, -2 ln 2] -> σ = [1, 2, 0.5], ‖σ‖₁ = 3.5
    logvar = np.array([[0.0, 2 * math.log(2.0), -2 * math.log(2.0)]])
    np.testing.assert_allclose(sigma_l1(logvar), [3.5], rtol=1e-6)

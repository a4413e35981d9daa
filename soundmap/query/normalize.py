"""Streaming normalisation of heatmaps: a 0–1 scale computed without holding the region in memory.

The reference min-max normalises scores over the region (and over all time steps of a temporal
map) — psm-reference "Tiles and maps". Here a *scale* (lo, hi) is accumulated window by window:

* ``minmax``: a running minimum and maximum (exact);
* ``percentile``: the 2nd and 98th percentiles, from a fixed-size histogram over [min, max] filled
  in a second pass. With :data:`HISTOGRAM_BINS` bins the error is at most (max − min) / 65 536 —
  far below what a colour map can show — and memory is constant whatever the region's size.

Values are mapped with ``clip((v − lo) / (hi − lo), 0, 1)``; a constant map (hi == lo) maps to 0.
NaN (nodata) is ignored everywhere and stays NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

HISTOGRAM_BINS = 65_536
PERCENTILE_DEFAULT: tuple[float, float] = (2.0, 98.0)
"""The percentiles mapped to 0 and 1 by ``--normalize percentile``."""


@dataclass
class RunningRange:
    """Minimum, maximum and count of the finite values seen so far."""

    low: float = float("inf")
    high: float = float("-inf")
    count: int = 0

    def update(self, values: np.ndarray) -> None:
        finite = values[np.isfinite(values)]
        if finite.size:
            self.low = min(self.low, float(finite.min()))
            self.high = max(self.high, float(finite.max()))
            self.count += int(finite.size)

    @property
    def empty(self) -> bool:
        return self.count == 0


@dataclass
class StreamingHistogram:
    """Counts of values in :data:`HISTOGRAM_BINS` equal bins over a known [low, high]."""

    low: float
    high: float
    bins: int = HISTOGRAM_BINS
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.counts = np.zeros(self.bins, dtype=np.int64)

    def update(self, values: np.ndarray) -> None:
        finite = values[np.isfinite(values)].astype(np.float64)
        if not finite.size:
            return
        if self.high <= self.low:
            self.counts[0] += finite.size
            return
        position = (finite - self.low) / (self.high - self.low) * self.bins
        index = np.clip(position.astype(np.int64), 0, self.bins - 1)
        self.counts += np.bincount(index, minlength=self.bins)

    def percentile(self, q: float) -> float:
        """The ``q``-th percentile (0–100) with numpy's linear definition.

        numpy interpolates between the order statistics at ranks ⌊r⌋ and ⌊r⌋ + 1, r = q/100·(n − 1);
        each order statistic is located in its bin (values spread evenly inside the bin), so each is
        off by at most one bin width, and so is the interpolation between them.
        """
        total = int(self.counts.sum())
        if total == 0 or self.high <= self.low:
            return self.low
        rank = q / 100.0 * (total - 1)
        below = int(np.floor(rank))
        cumulative = np.cumsum(self.counts)
        lower = self._order_statistic(below, cumulative)
        upper = self._order_statistic(min(below + 1, total - 1), cumulative)
        return float(lower + (rank - below) * (upper - lower))

    def _order_statistic(self, k: int, cumulative: np.ndarray) -> float:
        """Estimate of the k-th smallest value (0-based) from the bin that holds it."""
        bin_index = min(int(np.searchsorted(cumulative, k, side="right")), self.bins - 1)
        before = int(cumulative[bin_index - 1]) if bin_index > 0 else 0
        inside = int(self.counts[bin_index]) or 1
        fraction = (k - before + 0.5) / inside
        width = (self.high - self.low) / self.bins
        return self.low + (bin_index + min(max(fraction, 0.0), 1.0)) * width


@dataclass(frozen=True)
class Scale:
    """A linear map of raw scores to 0–1, and how it was obtained (recorded in output tags)."""

    low: float
    high: float
    method: str

    def apply(self, values: np.ndarray) -> np.ndarray:
        """``clip((v − low) / (high − low), 0, 1)`` as float32; NaN stays NaN."""
        values = np.asarray(values, dtype=np.float64)
        if not self.high > self.low:
            out = np.where(np.isnan(values), np.nan, 0.0)
        else:
            out = np.clip((values - self.low) / (self.high - self.low), 0.0, 1.0)
        return out.astype(np.float32)

    def describe(self) -> str:
        return f"{self.method} lo={self.low:.9g} hi={self.high:.9g}"


def sigma_l1(logvar: np.ndarray) -> np.ndarray:
    """‖σ‖₁ = Σ_d exp(log σ²_d / 2) over the last axis: the per-cell uncertainty map.

    psm-reference: "Uncertainty map: ‖σ‖₁ of the image embedding"; the heads output log σ², so
    σ = exp(log σ² / 2). (Summing variances instead would weight large σ quadratically; the L1 norm
    of σ is what the text names.)
    """
    return np.exp(np.asarray(logvar, dtype=np.float64) / 2.0).sum(axis=-1).astype(np.float32)

"""Small, dependency-free statistics for benchmark numbers.

Benchmarks on a shared machine are noisy, so every figure in the report is a *median over
repetitions* with its spread, never a single run or a mean that one hiccup can drag:

- `percentile` uses linear interpolation between closest ranks (numpy's default), so
  `percentile(xs, 50)` is the median and `percentile(xs, 100)` the maximum.
- `summarize` gives the median, the quartiles (p25 / p75, the error bars of the plots)
  and the extremes of a list of repetitions.
- `fairness` tells whether threads sharing a pool got similar service: the ratio of the
  least to the most served thread (1.0 = perfectly even, 0.0 = someone starved), the
  coefficient of variation (stdev / mean, 0.0 = perfectly even) and Jain's index
  ((sum x)^2 / (n * sum x^2), 1.0 = perfectly even, 1/n = one thread got everything).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any


def percentile(values: Iterable[float], pct: float) -> float:
    """The `pct`-th percentile (0-100) of `values`, interpolating linearly between ranks."""
    if not 0.0 <= pct <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {pct}")
    data = sorted(values)
    if not data:
        raise ValueError("percentile of an empty sequence")
    return _sorted_percentile(data, pct)


def _sorted_percentile(data: Sequence[float], pct: float) -> float:
    rank = (len(data) - 1) * pct / 100.0
    low = math.floor(rank)
    high = math.ceil(rank)
    if low == high:
        return float(data[low])
    return float(data[low] + (data[high] - data[low]) * (rank - low))


def percentiles(values: Iterable[float], pcts: Sequence[float]) -> list[float]:
    """Several percentiles of the same data, sorting it only once."""
    data = sorted(values)
    if not data:
        raise ValueError("percentiles of an empty sequence")
    return [_sorted_percentile(data, p) for p in pcts]


def median(values: Iterable[float]) -> float:
    """The middle value (the mean of the two middle values for an even count)."""
    return percentile(values, 50.0)


@dataclass(frozen=True, slots=True)
class Summary:
    """Median and spread of repeated measurements of one quantity."""

    median: float
    p25: float
    p75: float
    min: float
    max: float
    n: int

    @property
    def spread(self) -> float:
        """Relative half-width of the interquartile range (0.05 = about +/-5 %)."""
        if self.median == 0:
            return 0.0
        return (self.p75 - self.p25) / 2.0 / abs(self.median)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Summary:
        return cls(**{k: data[k] for k in ("median", "p25", "p75", "min", "max", "n")})


def summarize(values: Iterable[float]) -> Summary:
    """Median, quartiles and extremes of `values` (at least one)."""
    data = sorted(values)
    if not data:
        raise ValueError("summary of an empty sequence")
    p25, p50, p75 = (_sorted_percentile(data, p) for p in (25.0, 50.0, 75.0))
    return Summary(
        median=p50, p25=p25, p75=p75, min=float(data[0]), max=float(data[-1]), n=len(data)
    )


@dataclass(frozen=True, slots=True)
class Fairness:
    """How evenly a shared pool served its threads (counts of completed requests)."""

    min_max_ratio: float  # least served / most served: 1.0 even, 0.0 starved
    cv: float  # coefficient of variation: stdev / mean, 0.0 even
    jain: float  # Jain's fairness index: 1.0 even, 1/n one thread got all

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def fairness(counts: Sequence[float]) -> Fairness:
    """Fairness of per-thread completion counts (at least one thread)."""
    if not counts:
        raise ValueError("fairness of no threads")
    if any(c < 0 for c in counts):
        raise ValueError("counts must not be negative")
    n = len(counts)
    total = float(sum(counts))
    if total == 0:
        # Nobody was served: equally (un)fair to everyone, but say so with zeros.
        return Fairness(min_max_ratio=0.0, cv=0.0, jain=0.0)
    mean = total / n
    variance = sum((c - mean) ** 2 for c in counts) / n
    return Fairness(
        min_max_ratio=min(counts) / max(counts),
        cv=math.sqrt(variance) / mean,
        jain=total * total / (n * sum(c * c for c in counts)),
    )


def ratio(value: float, reference: float) -> float | None:
    """value / reference, or None when the reference is zero or missing."""
    if not reference:
        return None
    return value / reference


def cdf_points(
    values: Iterable[float], max_points: int = 400, tail: int = 100
) -> tuple[list[float], list[float]]:
    """(x, y) of the empirical CDF of `values`, thinned to at most `max_points` + `tail`.

    The `tail` largest values are all kept, so the slow end the plot exists for (the
    rare starving request) survives the thinning.
    """
    data = sorted(values)
    n = len(data)
    if n == 0:
        return [], []
    step = max(1, math.ceil(n / max_points))
    idx = sorted(set(range(0, n, step)) | set(range(max(0, n - tail), n)))
    return [float(data[i]) for i in idx], [(i + 1) / n for i in idx]

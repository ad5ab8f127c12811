"""Unit tests of the benchmark's statistics helpers (benchmarks/stats.py): no server needed."""

from __future__ import annotations

import math
import random

import pytest

from benchmarks.stats import (
    Summary,
    cdf_points,
    fairness,
    median,
    percentile,
    percentiles,
    ratio,
    summarize,
)


class TestPercentile:
    def test_interpolates_linearly_between_ranks(self) -> None:
        # numpy.percentile([1, 2, 3, 4], q) with the default "linear" method
        data = [1, 2, 3, 4]
        assert percentile(data, 0) == 1
        assert percentile(data, 25) == pytest.approx(1.75)
        assert percentile(data, 50) == pytest.approx(2.5)
        assert percentile(data, 75) == pytest.approx(3.25)
        assert percentile(data, 100) == 4

    def test_exact_rank(self) -> None:
        assert percentile([10, 20, 30, 40, 50], 50) == 30
        assert percentile([10, 20, 30, 40, 50], 75) == 40

    def test_order_of_input_does_not_matter(self) -> None:
        data = list(range(101))
        shuffled = data[:]
        random.Random(7).shuffle(shuffled)
        for p in (0, 1, 33.3, 50, 99, 100):
            assert percentile(shuffled, p) == pytest.approx(percentile(data, p))
        assert percentile(shuffled, 99) == pytest.approx(99)

    def test_single_value(self) -> None:
        assert percentile([3.5], 0) == 3.5
        assert percentile([3.5], 99) == 3.5

    def test_accepts_any_iterable(self) -> None:
        assert percentile((x for x in [3, 1, 2]), 50) == 2

    def test_rejects_empty_and_out_of_range(self) -> None:
        with pytest.raises(ValueError, match="empty"):
            percentile([], 50)
        with pytest.raises(ValueError, match=r"0\.\.100"):
            percentile([1, 2], 101)
        with pytest.raises(ValueError, match=r"0\.\.100"):
            percentile([1, 2], -1)

    def test_percentiles_match_one_at_a_time(self) -> None:
        data = [random.Random(1).random() for _ in range(57)]
        pcts = [0, 10, 50, 90, 99, 100]
        assert percentiles(data, pcts) == [pytest.approx(percentile(data, p)) for p in pcts]
        with pytest.raises(ValueError):
            percentiles([], [50])

    def test_median(self) -> None:
        assert median([5, 1, 3]) == 3
        assert median([4, 1, 3, 2]) == 2.5


class TestSummary:
    def test_summarize(self) -> None:
        s = summarize([5, 1, 4, 2, 3])
        assert s == Summary(median=3, p25=2, p75=4, min=1, max=5, n=5)

    def test_spread_is_relative_half_iqr(self) -> None:
        s = summarize([90, 100, 110])
        assert s.p25 == 95 and s.p75 == 105
        assert s.spread == pytest.approx(0.05)
        assert summarize([0, 0]).spread == 0.0

    def test_round_trips_through_a_dict(self) -> None:
        s = summarize([1.5, 2.5, 10.0])
        assert Summary.from_dict(s.to_dict()) == s

    def test_rejects_empty(self) -> None:
        with pytest.raises(ValueError):
            summarize([])


class TestFairness:
    def test_even_service_is_perfectly_fair(self) -> None:
        f = fairness([100, 100, 100, 100])
        assert f.min_max_ratio == 1.0
        assert f.cv == 0.0
        assert f.jain == pytest.approx(1.0)

    def test_one_thread_gets_everything(self) -> None:
        f = fairness([400, 0, 0, 0])
        assert f.min_max_ratio == 0.0
        assert f.cv == pytest.approx(math.sqrt(3))  # population stdev 173.2 / mean 100
        assert f.jain == pytest.approx(0.25)  # 1 / n

    def test_partial_unfairness(self) -> None:
        f = fairness([50, 100])
        assert f.min_max_ratio == 0.5
        assert f.cv == pytest.approx(25 / 75)
        assert f.jain == pytest.approx(150**2 / (2 * (50**2 + 100**2)))

    def test_nobody_served(self) -> None:
        f = fairness([0, 0, 0])
        assert (f.min_max_ratio, f.cv, f.jain) == (0.0, 0.0, 0.0)

    def test_single_thread(self) -> None:
        assert fairness([7]).min_max_ratio == 1.0

    def test_rejects_bad_input(self) -> None:
        with pytest.raises(ValueError):
            fairness([])
        with pytest.raises(ValueError):
            fairness([1, -1])


def test_ratio() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None


class TestCdf:
    def test_small_data_keeps_every_point(self) -> None:
        xs, ys = cdf_points([3, 1, 2])
        assert xs == [1, 2, 3]
        assert ys == pytest.approx([1 / 3, 2 / 3, 1.0])

    def test_thinning_keeps_the_tail(self) -> None:
        data = list(range(10_000))
        xs, ys = cdf_points(data, max_points=100, tail=20)
        assert len(xs) <= 120
        assert xs[-20:] == list(range(9980, 10_000))  # every one of the slowest is kept
        assert xs[-1] == 9999 and ys[-1] == 1.0
        assert xs == sorted(xs) and ys == sorted(ys)

    def test_empty(self) -> None:
        assert cdf_points([]) == ([], [])

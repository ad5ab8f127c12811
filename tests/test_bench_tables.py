"""How `pgpool bench` shows a number (benchmarks/common.py): spread, repetitions, noise,
sessions. No server needed."""

from __future__ import annotations

import pytest

from benchmarks.common import (
    fmt_sessions,
    fmt_spread,
    noisy,
    over_maxconn,
    sessions,
    sessions_note,
    spread_column,
    spread_note,
)
from benchmarks.stats import Summary, summarize


def test_a_single_measurement_is_marked_never_plus_minus_zero() -> None:
    once = summarize([15_464.0])
    assert fmt_spread(once, 0) == "15,464 (n=1)"
    assert "±" not in fmt_spread(once, 2)


def test_spread_is_half_the_interquartile_range() -> None:
    s = summarize([90.0, 100.0, 110.0])  # p25 95, p75 105
    assert fmt_spread(s, 1) == "100.0 ±5.0"
    assert fmt_spread(s, 0, scale=1e3) == "100,000 ±5,000"


def test_a_spread_too_small_for_the_digits_keeps_two_significant_figures() -> None:
    s = summarize([1.0, 1.001, 1.002])
    assert fmt_spread(s, 1) == "1.0 ±0.0005"


def test_noisy_when_the_spread_exceeds_the_gap_to_the_nearest_other_median() -> None:
    rows = {
        "a": summarize([90.0, 100.0, 110.0]),  # ±5, nearest other median 103: gap 3
        "b": summarize([102.0, 103.0, 104.0]),  # ±1, gap 3: its rank is established
        "c": summarize([200.0]),  # once: marked (n=1), not noisy
    }
    assert noisy(rows) == {"a"}
    assert noisy({"a": rows["a"]}) == set()  # nobody to be confused with


def test_spread_column_marks_noisy_cells() -> None:
    rows = {
        "a": {"qps": summarize([90.0, 100.0, 110.0]).to_dict()},
        "b": {"qps": summarize([102.0, 103.0, 104.0]).to_dict()},
        "c": {"qps": summarize([300.0]).to_dict()},
    }
    assert spread_column(rows, "qps", 0) == {
        "a": "100 ±5~",
        "b": "103 ±0.5",  # half the IQR is 0.5: shown, not rounded to ±0
        "c": "300 (n=1)",
    }


@pytest.mark.parametrize(("reps", "words"), [(1, "measured once"), (5, "median of 5")])
def test_spread_note_says_how_many_repetitions(reps: int, words: str) -> None:
    assert words in spread_note(reps)


def test_sessions_over_maxconn_are_marked() -> None:
    rows = {
        "pgpool": {"sessions": sessions([4, 4, 3], 4)},
        "peer": {"sessions": sessions([17, 19, 16], 4)},
        "floor": {},
    }
    assert fmt_sessions(rows["pgpool"]["sessions"]) == "4"
    assert fmt_sessions(rows["peer"]["sessions"]) == "19 (>4)"
    assert fmt_sessions(None) == "-"
    assert over_maxconn(rows) == {"peer"}
    assert "(>4) = exceeded it" in sessions_note(4, rows)
    assert "exceeded" not in sessions_note(4, {"pgpool": rows["pgpool"]})


def test_summary_of_identical_values_has_no_spread() -> None:
    assert Summary.from_dict(summarize([2.0, 2.0]).to_dict()).spread == 0.0


def test_plot_value_labels_are_plain_numbers() -> None:
    from benchmarks.plots import plain

    assert plain(27_480.4) == "27,480"  # not 2.75e+04
    assert plain(15_464.0) == "15,464"
    assert plain(21.74) == "21.7"
    assert plain(0.948) == "0.95"


def test_plot_marks_a_pool_over_maxconn_and_labels_past_the_error_bar() -> None:
    import matplotlib.pyplot as plt

    from benchmarks.plots import _bars

    rows = {
        "pgpool-threaded": {
            "qps": {"median": 100.0, "p25": 90.0, "p75": 130.0, "min": 1, "max": 1, "n": 3},
            "sessions": sessions([4], 4),
        },
        "psycopg2-pool-ts": {"qps": summarize([150.0]).to_dict(), "sessions": sessions([19], 4)},
    }
    fig, ax = plt.subplots()
    try:
        _bars(ax, rows, {"pgpool-threaded": "pgpool", "psycopg2-pool-ts": "peer"}, "qps")
        labels = [t.get_text() for t in ax.get_yticklabels()]
        assert labels == ["pgpool", "peer\n(19 sessions > max 4)"]
        assert [bar.get_hatch() for bar in ax.patches] == [None, "//"]
        first = ax.texts[0]
        assert first.get_text() == "100" and first.xy[0] == 130.0  # at the p75 end, not on it
        assert ax.get_xlim()[1] > 150.0  # room for the longest bar's label
    finally:
        plt.close(fig)


def test_repetitions_that_agree_say_how_many() -> None:
    assert fmt_spread(summarize([2.0, 2.0, 2.0]), 0) == "2 ±0 (n=3)"


def test_small_ratios_keep_two_significant_figures() -> None:
    from benchmarks.common import fmt_ratio

    assert fmt_ratio(33 / 6860) == "0.0048x"  # not 0.00x
    assert fmt_ratio(0.93) == "0.93x"
    assert fmt_ratio(None) == "-"

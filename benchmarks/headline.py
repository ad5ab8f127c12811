"""The headline table: one line per key number, pgpool next to psycopg2.pool and the best
of the other pools, all from the same run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchmarks.common import NOISY, ONCE, Table, fmt_ratio, noisy
from benchmarks.stats import Summary

PGPOOL, PSYCOPG2 = "pgpool-threaded", "psycopg2-threaded"
OTHERS = ("psycopg2-pool-ts", "psycopg_pool", "sqlalchemy", "dbutils")


def _pick(
    rows: dict[str, Any], value: Callable[[dict[str, Any]], float], higher_is_better: bool
) -> tuple[str, float] | None:
    """The best of the other pools for this metric, (key, value), among those that kept
    within the configured maxconn."""
    found = [
        (k, value(rows[k]))
        for k in OTHERS
        if k in rows and not rows[k].get("sessions", {}).get("over")
    ]
    if not found:
        return None
    return (max if higher_is_better else min)(found, key=lambda kv: kv[1])


def _line(
    what: str,
    rows: dict[str, Any],
    labels: dict[str, str],
    value: Callable[[dict[str, Any]], float],
    fmt: str,
    higher_is_better: bool,
) -> list[str] | None:
    if PGPOOL not in rows or PSYCOPG2 not in rows:
        return None
    mine, theirs = value(rows[PGPOOL]), value(rows[PSYCOPG2])
    best = _pick(rows, value, higher_is_better)
    shown = [PGPOOL, PSYCOPG2] + ([best[0]] if best else [])
    marks = _marks(rows, shown, value)
    # On the console the spread goes on a second line of the cell (the table stays within
    # 100 columns); the Markdown report joins the lines with a space.
    cells = [fmt.format(value(rows[k])) + marks[k] for k in shown]
    best_cell = "-"
    if best:
        best_cell = f"{fmt.format(best[1])} ({labels[best[0]]}){marks[best[0]]}"
    times = fmt_ratio(mine / theirs) if theirs else "-"
    return [what, cells[0], cells[1], times, best_cell]


class _Med:
    """A row's median of `metric` times `scale`; it also knows where the spread is."""

    def __init__(self, metric: str, scale: float = 1.0) -> None:
        self.metric, self.scale = metric, scale

    def __call__(self, row: dict[str, Any]) -> float:
        return float(row[self.metric]["median"]) * self.scale


def _marks(
    rows: dict[str, Any], keys: list[str], value: Callable[[dict[str, Any]], float]
) -> dict[str, str]:
    """Per cell: "±N%" (half the IQR relative to the median), "(n=1)" when measured once,
    and "~" when the spread exceeds the gap to the nearest other cell of the line. Nothing
    for derived figures (ratios of medians), which have no spread of their own."""
    if not isinstance(value, _Med):
        return dict.fromkeys(keys, "")
    summaries = {k: Summary.from_dict(rows[k][value.metric]) for k in keys}
    shaky = noisy(summaries)
    out = {}
    for k, s in summaries.items():
        if s.n < 2:
            out[k] = f"\n{ONCE}"
            continue
        pct = s.spread * 100
        spread = f"±{pct:.0f}%" if pct >= 1 else f"±{pct:.1g}%"
        if pct == 0:
            spread = f"±0 (n={s.n})"  # the repetitions all agree: say how many
        out[k] = f"\n{spread}{NOISY if k in shaky else ''}"
    return out


def _med(metric: str, scale: float = 1.0) -> Callable[[dict[str, Any]], float]:
    return _Med(metric, scale)


def headline(scenarios: dict[str, Any]) -> Table:
    lines: list[list[str] | None] = []
    ok = {k: v for k, v in scenarios.items() if "error" not in v}
    if "cycle" in ok:
        res = ok["cycle"]
        for variant, what in (("noop", "checkout + return"), ("select1", "... + SELECT 1")):
            rows = res["variants"][variant]["rows"]
            fmt = "{:.2f} us" if variant == "noop" else "{:.1f} us"
            lines.append(_line(f"cycle: {what}", rows, res["labels"], _med("us"), fmt, False))
    if "contention" in ok:
        res = ok["contention"]
        variants = (
            ("select1", "SELECT 1"),
            ("sleep2ms", "2 ms"),
            ("select1_one_cpu", "1 CPU"),
        )
        for variant, what in variants:
            if variant not in res["variants"]:
                continue
            rows = res["variants"][variant]["rows"]
            lines.append(
                _line(f"contention {what}: q/s", rows, res["labels"], _med("qps"), "{:,.0f}", True)
            )
            lines.append(
                _line(
                    f"contention {what}: max wait",
                    rows,
                    res["labels"],
                    _med("wait_max_ms"),
                    "{:,.1f} ms",
                    False,
                )
            )
    if "churn" in ok:
        res = ok["churn"]
        rows, labels = res["rows"], res["labels"]
        lines.append(_line("churn (1, 3): q/s", rows, labels, _med("qps"), "{:,.0f}", True))
        lines.append(
            _line("churn: connects / 1k requests", rows, labels, _med("reconnects_per_1k"),
                  "{:,.0f}", False)
        )  # fmt: skip
    if "spike" in ok and "skipped" not in ok["spike"]:
        res = ok["spike"]
        rows, labels = res["rows"], res["labels"]
        lines.append(
            _line("spike: all 50 served", rows, labels, _med("served_s", 1e3), "{:,.0f} ms", False)
        )
        lines.append(
            _line("spike: connections opened", rows, labels, _med("opened_after_settle"),
                  "{:.0f}", False)
        )  # fmt: skip
    if "scale" in ok:
        res = ok["scale"]
        labels = res["labels"]
        over = res.get("over_maxconn", {})

        def grow(row: dict[str, Any]) -> float:
            return float(row["largest_vs_ref"])

        def marked(rows: dict[str, Any], series: str) -> dict[str, Any]:
            """The rows with the sessions flag the other scenarios carry."""
            flagged = over.get(series, {})
            return {k: {**v, "sessions": {"over": k in flagged}} for k, v in rows.items()}

        idle = marked(res["maxconn"]["idle"], "idle")
        lines.append(_line("scale: maxconn 1000 / 4", idle, labels, grow, "{:.2f}x", False))
        threads = marked(res["threads"], "threads")

        def added(row: dict[str, Any]) -> float:
            """Microseconds 256 threads add to one cycle (the goal's measure, goals.py)."""
            return float(row["ns"]["256"]["median"] - row["ns"]["1"]["median"]) / 1e3

        lines.append(_line("scale: 256 threads add", threads, labels, added, "+{:.1f} us", False))
    if "unpooled" in ok:
        rows = ok["unpooled"]["rows"]
        if "connect-per-request" in rows and PGPOOL in rows:
            unpooled = rows["connect-per-request"]["us"]["median"]
            pooled = rows[PGPOOL]["us"]["median"]
            lines.append(
                [
                    "SELECT 1: connect per request",
                    f"{pooled:,.1f} us",
                    f"{rows[PSYCOPG2]['us']['median']:,.1f} us" if PSYCOPG2 in rows else "-",
                    "-",
                    f"{unpooled:,.0f} us = {unpooled / pooled:.0f}x pgpool's",
                ]
            )
    if "import" in ok:
        res = ok["import"]
        # The import scenario names its rows by module: pgpool against psycopg2.pool.
        keys = {"pgpool": PGPOOL, "psycopg2": PSYCOPG2, "psycopg_pool": "psycopg_pool"}
        keys["sqlalchemy"] = "sqlalchemy"
        rows = {keys[k]: v for k, v in res["rows"].items() if k in keys}
        labels = {keys[k]: v for k, v in res["labels"].items() if k in keys}
        lines.append(_line("import", rows, labels, _med("ms"), "{:.1f} ms", False))
    cols = ["", "pgpool", "psycopg2", "ratio", "best other pool"]
    notes = [
        "medians from this run, Threaded pools; under each: half the interquartile range "
        "relative to the median (the scenario tables say how many repetitions), (n=1) if "
        "measured once, ~ if that spread exceeds the gap to the nearest other cell of the line",
        "ratio: pgpool / psycopg2 of the two medians shown",
        "best other pool: psycopg2-pool, psycopg_pool, SQLAlchemy or DBUtils, among those "
        "that kept within maxconn",
    ]
    return Table("headline", cols, [line for line in lines if line is not None], notes)

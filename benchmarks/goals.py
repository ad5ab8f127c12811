"""pgpool's performance goals, judged against numbers measured in the same run.

Every goal is a ratio or a count taken from this run's results, never from a stored
baseline, so a slower or faster machine does not change the verdict. Each goal is
reported MET or MISSED with the numbers behind it; a goal whose scenario did not run is
"NOT RUN". Nothing is ever left out because it missed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

PGPOOL = "pgpool-threaded"
PSYCOPG2 = "psycopg2-threaded"
PSYCOPG_POOL = "psycopg_pool"


@dataclass(frozen=True)
class Goal:
    scenario: str
    goal: str  # what is promised, in words
    measured: str  # the numbers behind the verdict
    met: bool | None  # None: the scenario did not run (or lacked a contender)

    @property
    def verdict(self) -> str:
        return {True: "MET", False: "MISSED", None: "NOT RUN"}[self.met]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict}


def _median(row: dict[str, Any], metric: str) -> float:
    value: float = row[metric]["median"]
    return value


def _cycle(res: dict[str, Any]) -> list[Goal]:
    goals = []
    noop = res["variants"]["noop"]["rows"]
    sel = res["variants"]["select1"]["rows"]
    if PGPOOL in noop and PSYCOPG2 in noop:
        mine, theirs = _median(noop[PGPOOL], "us"), _median(noop[PSYCOPG2], "us")
        paired = noop[PGPOOL]["vs_baseline"]  # median of per-repetition ratios
        goals.append(
            Goal(
                "cycle",
                "checkout + return (no query): pgpool Threaded <= 1.0x psycopg2 Threaded",
                f"{mine:.2f} us vs {theirs:.2f} us = {paired:.2f}x",
                paired <= 1.0,
            )
        )
    if PGPOOL in sel and "overhead_pct" in sel[PGPOOL]:
        row = sel[PGPOOL]
        floor = sel[row["floor"]]
        goals.append(
            Goal(
                "cycle",
                "with SELECT 1: pgpool's overhead above the raw-connection floor < 5 %",
                f"{_median(row, 'us'):.1f} us vs floor {_median(floor, 'us'):.1f} us = "
                f"{row['overhead_pct']:+.1f} %",
                row["overhead_pct"] < 5.0,
            )
        )
    return goals


def _contention(res: dict[str, Any]) -> list[Goal]:
    goals = []
    for variant, what in (("select1", "SELECT 1"), ("sleep2ms", "2 ms server work")):
        rows = res["variants"].get(variant, {}).get("rows", {})
        if PGPOOL not in rows:
            continue
        fastest = max(rows, key=lambda k: _median(rows[k], "qps"))
        mine, best = _median(rows[PGPOOL], "qps"), _median(rows[fastest], "qps")
        label = res["labels"][fastest]
        goals.append(
            Goal(
                "contention",
                f"{what}: pgpool q/s >= 0.9x the fastest contender",
                f"{mine:,.0f} q/s vs {best:,.0f} q/s ({label}) = {mine / best:.2f}x",
                mine >= 0.9 * best,
            )
        )
        if PSYCOPG_POOL in rows:
            my_max = _median(rows[PGPOOL], "wait_max_ms")
            their_max = _median(rows[PSYCOPG_POOL], "wait_max_ms")
            goals.append(
                Goal(
                    "contention",
                    f"{what}: pgpool max checkout wait <= psycopg_pool's",
                    f"{my_max:.1f} ms vs {their_max:.1f} ms",
                    my_max <= their_max,
                )
            )
    return goals


def _churn(res: dict[str, Any]) -> list[Goal]:
    rows = res["rows"]
    st = res["settings"]
    if PGPOOL not in rows:
        return []
    mine = rows[PGPOOL]
    reconnects = max(r["reconnects"] for r in mine["per_rep"])
    goals = [
        Goal(
            "churn",
            "zero reconnects during steady load",
            f"{reconnects} connections opened during steady load (worst repetition)",
            reconnects == 0,
        )
    ]
    if PSYCOPG2 in rows:
        q, base = _median(mine, "qps"), _median(rows[PSYCOPG2], "qps")
        goals.append(
            Goal(
                "churn",
                "q/s >= 5x psycopg2 Threaded",
                f"{q:,.0f} q/s vs {base:,.0f} q/s = {q / base:.1f}x",
                q >= 5 * base,
            )
        )
    limit = st["max_idle"] + st["maintenance_interval"]
    shrink = mine["shrink_s"]
    goals.append(
        Goal(
            "churn",
            f"shrinks back to minconn within max_idle + one interval ({limit:g} s)",
            f"back to {st['minconn']} after {shrink:.2f} s"
            if shrink is not None
            else f"not back to {st['minconn']} within {st['observe_s']:g} s",
            shrink is not None and shrink <= limit,
        )
    )
    return goals


def _spike(res: dict[str, Any]) -> list[Goal]:
    rows = res["rows"]
    if "skipped" in res or PGPOOL not in rows:
        return [Goal("spike", "spike scenario", res.get("skipped", "pgpool not measured"), None)]
    mine = rows[PGPOOL]
    opened = max(r["opened_after_settle"] for r in mine["per_rep"])
    goals = [
        Goal(
            "spike",
            "pgpool opens <= 10 connections",
            f"{opened} opened (worst repetition, connects in flight included)",
            opened <= 10,
        )
    ]
    if PSYCOPG2 in rows:
        t, base = _median(mine, "served_s"), _median(rows[PSYCOPG2], "served_s")
        goals.append(
            Goal(
                "spike",
                "serves all 50 sooner than psycopg2.pool",
                f"{t * 1e3:,.0f} ms vs {base * 1e3:,.0f} ms",
                t < base,
            )
        )
    return goals


def _scale(res: dict[str, Any]) -> list[Goal]:
    goals = []
    for series, what in (("idle", "all idle"), ("held", "all but one checked out")):
        row = res["maxconn"][series].get(PGPOOL)
        if row is None:
            continue
        r = row["largest_vs_ref"]
        goals.append(
            Goal(
                "scale",
                f"cost at maxconn 1000 within 1.25x of maxconn 4 ({what})",
                f"{row['ns']['1000']['median'] / 1e3:.2f} us vs "
                f"{row['ns']['4']['median'] / 1e3:.2f} us = {r:.2f}x",
                r <= 1.25,
            )
        )
    row = res["threads"].get(PGPOOL)
    if row is not None:
        r = row["largest_vs_ref"]
        measured = (
            f"{row['ns']['256']['median'] / 1e3:.2f} us vs "
            f"{row['ns']['1']['median'] / 1e3:.2f} us = {r:.2f}x"
        )
        floor = res["threads"].get("lock-floor")
        if floor is not None:
            measured += f" (a bare threading.Lock: {floor['largest_vs_ref']:.2f}x)"
        goals.append(
            Goal("scale", "cost with 256 threads within 1.25x of 1 thread", measured, r <= 1.25)
        )
    return goals


JUDGES: dict[str, Callable[[dict[str, Any]], list[Goal]]] = {
    "cycle": _cycle,
    "contention": _contention,
    "churn": _churn,
    "spike": _spike,
    "scale": _scale,
}


def evaluate(results: dict[str, Any]) -> list[Goal]:
    """Every goal of every scenario, MET / MISSED, or NOT RUN if its scenario did not run."""
    goals: list[Goal] = []
    for scenario, judge in JUDGES.items():
        if scenario in results:
            goals += judge(results[scenario])
        else:
            goals.append(Goal(scenario, "all goals of this scenario", "scenario not run", None))
    return goals

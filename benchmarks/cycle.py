"""Scenario 1, cycle: what one checkout + return costs, with and without a query.

One thread borrows a connection and gives it straight back, over and over. Nobody waits,
nobody connects: this is the pool's bookkeeping alone, the price paid on *every* request
of an application. Two variants:

- **no query**: ``getconn()`` + ``putconn()``: pure pool overhead, in microseconds;
- **SELECT 1**: the same with the cheapest possible query in between, next to the *floor*
  (one raw connection reused, no pool at all). The difference is what the pool adds to a
  real (tiny) request; a good pool disappears in the round trip.

psycopg_pool runs on the psycopg 3 driver, so its floor is a raw psycopg 3 connection.
With a single thread psycopg2.pool is never exhausted, so it runs without a retry loop.

Two more floors run in both variants: one connection in a list behind a threading.Lock,
taken with ``with lock:`` (as pgpool does) and with acquire/try/finally (as psycopg2.pool
does). The idioms differ in cost, ~0.06 us per critical section on CPython 3.11, and
pgpool's is the one a signal cannot leave locked (benchmarks/lock_idiom.py). A pool's time
above its own idiom's floor is its bookkeeping, which the cycle goal compares (goals.py).

Method: every contender is opened at once and they take turns, in many short repetitions
(a few milliseconds each), so that a slow patch of the machine hits everyone alike; the
garbage collector is paused while timing, like `timeit`. The figure is the median over
repetitions, with half the interquartile range as spread; ratios are the median of the
per-repetition ratios.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from typing import Any

from benchmarks import contenders as cs
from benchmarks.common import (
    Context,
    Table,
    fmt,
    fmt_ratio,
    fmt_sessions,
    no_gc,
    opened,
    same_cpu,
    sessions,
    sessions_note,
    spread_column,
    spread_note,
)
from benchmarks.stats import Summary, summarize

NAME = "cycle"
TITLE = "Checkout + return, one thread"
MINCONN, MAXCONN = 1, 4
VARIANTS = {"noop": None, "select1": "SELECT 1"}
VARIANT_TITLES = {"noop": "no query", "select1": "SELECT 1"}
FLOORS = {"psycopg 3": "raw-psycopg3", "psycopg2": "raw-psycopg2"}
# One connection in a list behind a lock, taken the way each pool takes its own lock
# (contenders._LockFloor): what is left above it is the pool's own bookkeeping.
LOCK_FLOORS = {
    "pgpool-threaded": "lock-with",
    "pgpool-simple": "lock-with",
    "psycopg2-threaded": "lock-try",
}
LOCK_IDIOMS = {"lock-with": "with", "lock-try": "try"}  # how a table cell names each


def _sizes(quick: bool) -> dict[str, tuple[int, int, int]]:
    """(rounds, repetitions per round, cycles per repetition) for each variant.

    Many short repetitions rather than a few long ones: with the contenders taking turns,
    each repetition compares them under the same conditions of the machine, and the
    median of many such comparisons shrugs off a burst of load elsewhere.

    With a query, every round opens fresh pools: on a small machine the round trip of one
    connection can be several times slower than another's for seconds at a time (its
    server process is scheduled next to the client, say). New connections each round
    redraw that lottery, so it cannot favour one contender for the whole run.
    """
    if quick:
        return {"noop": (1, 10, 500), "select1": (3, 5, 20)}
    return {"noop": (1, 60, 2000), "select1": (30, 10, 40)}


def _contenders(variant: str) -> list[cs.Contender]:
    pools = cs.select(reference=False)
    lock_floors = cs.select(keys=sorted(set(LOCK_FLOORS.values())))
    if variant == "noop":
        return pools + lock_floors
    return pools + cs.select(keys=list(FLOORS.values())) + lock_floors


def steps(quick: bool) -> int:
    return sum(rounds for rounds, _, _ in _sizes(quick).values())


def _time_cycles(handle: cs.Handle, n: int, sql: str | None) -> float:
    """Microseconds per cycle over `n` cycles."""
    get, put, query = handle.get, handle.put, cs.run_query
    start = time.perf_counter()
    if sql is None:
        for _ in range(n):
            put(get())
    else:
        for _ in range(n):
            conn = get()
            query(conn, sql)
            put(conn)
    return (time.perf_counter() - start) / n * 1e6


def run(ctx: Context) -> dict[str, Any]:
    with same_cpu(ctx) as placement:
        variants = {variant: _run_variant(ctx, variant, sql) for variant, sql in VARIANTS.items()}
    return {
        "title": TITLE,
        "settings": {"minconn": MINCONN, "maxconn": MAXCONN, "placement": placement},
        "labels": {c.key: c.label for c in cs.CONTENDERS},
        "variants": variants,
    }


def _run_variant(ctx: Context, variant: str, sql: str | None) -> dict[str, Any]:
    cfg = cs.PoolConfig(ctx.dsn, MINCONN, MAXCONN, retry=False)
    chosen = _contenders(variant)
    rounds, reps, n = _sizes(ctx.quick)[variant]
    samples: dict[str, list[float]] = {c.key: [] for c in chosen}
    peaks: dict[str, list[int]] = {c.key: [] for c in chosen}
    for _round in range(rounds):
        with ExitStack() as stack:
            handles = {c.key: stack.enter_context(opened(c, cfg)) for c in chosen}
            with no_gc():
                for handle in handles.values():  # warm-up: caches, first-use paths
                    _time_cycles(handle, n * 5, sql)
                for rep in range(reps):
                    order = list(handles.items())
                    shift = rep % len(order)  # rotate who goes first
                    for key, handle in order[shift:] + order[:shift]:
                        samples[key].append(_time_cycles(handle, n, sql))
            for key, handle in handles.items():
                peaks[key].append(handle.opened.peak)
        ctx.advance(f"cycle / {VARIANT_TITLES[variant]}")
    result = _analyse(chosen, samples, variant)
    for key, row in result["rows"].items():
        row["sessions"] = sessions(peaks[key], MAXCONN)
    result.update(cycles=n, repetitions=rounds * reps, rounds=rounds)
    return result


def _paired(mine: list[float], theirs: list[float]) -> Summary:
    """mine / theirs, repetition by repetition: both were timed moments apart."""
    return summarize(m / t for m, t in zip(mine, theirs, strict=True))


def _analyse(
    chosen: list[cs.Contender], samples: dict[str, list[float]], variant: str
) -> dict[str, Any]:
    base = samples.get(cs.BASELINE)
    rows: dict[str, Any] = {}
    for c in chosen:
        s = summarize(samples[c.key])
        row: dict[str, Any] = {
            "us": s.to_dict(),
            "samples": samples[c.key],
            # The ratio of each repetition's pair, not the ratio of two medians.
            "vs_baseline": _paired(samples[c.key], base).median if base else None,
        }
        floor_key = FLOORS[c.driver]
        if variant == "select1" and floor_key in samples and not c.reference:
            floor = samples[floor_key]
            row["floor"] = floor_key
            row["overhead_us"] = summarize(
                m - f for m, f in zip(samples[c.key], floor, strict=True)
            ).median
            row["overhead_pct"] = (_paired(samples[c.key], floor).median - 1) * 100
        lock_floor = LOCK_FLOORS.get(c.key)
        if lock_floor in samples:
            row["lock_floor"] = lock_floor
            row["above_lock_us"] = summarize(
                m - f for m, f in zip(samples[c.key], samples[lock_floor], strict=True)
            ).median
        rows[c.key] = row
    # pgpool's bookkeeping against psycopg2's: each one's time above its own lock floor,
    # repetition by repetition (the cycle goal, goals.py).
    mine, theirs = rows.get("pgpool-threaded", {}), rows.get(cs.BASELINE, {})
    if "lock_floor" in mine and "lock_floor" in theirs:
        pairs = zip(
            samples["pgpool-threaded"],
            samples[mine["lock_floor"]],
            samples[cs.BASELINE],
            samples[theirs["lock_floor"]],
            strict=True,
        )
        mine["above_lock_vs_baseline"] = summarize(
            (p - pf) / (b - bf) for p, pf, b, bf in pairs if b > bf
        ).median
    return {"rows": rows}


def tables(result: dict[str, Any]) -> list[Table]:
    out = []
    labels = result["labels"]
    for variant, data in result["variants"].items():
        title = f"cycle: checkout + return, {VARIANT_TITLES[variant]} (us per cycle)"
        cols = ["contender", "sessions", "us / cycle", "paired ratio"]
        if variant == "select1":
            cols += ["above the floor"]
        cols += ["above lock"]
        rows = data["rows"]
        us = spread_column(rows, "us", 2 if variant == "noop" else 1)
        table_rows = []
        for key, row in rows.items():
            cells = [labels[key], fmt_sessions(row.get("sessions")), us[key]]
            cells.append(fmt_ratio(row["vs_baseline"]))
            if variant == "select1":
                if "overhead_us" in row:
                    over = f"{fmt(row['overhead_us'], 1, ' us')} ({row['overhead_pct']:+.1f} %)"
                    cells.append(over)
                else:
                    cells.append("(floor)" if key in FLOORS.values() else "-")
            if "above_lock_us" in row:
                idiom = LOCK_IDIOMS[row["lock_floor"]]
                digits = 2 if variant == "noop" else 1  # as the us / cycle column
                cells.append(f"+{fmt(row['above_lock_us'], digits)} {idiom}")
            else:
                cells.append("(floor)" if key in LOCK_FLOORS.values() else "-")
            table_rows.append(cells)
        rounds = data.get("rounds", 1)
        fresh = f" (in {rounds} rounds of fresh pools)" if rounds > 1 else ""
        notes = [
            spread_note(data["repetitions"], f"repetitions x {data['cycles']:,} cycles{fresh}")
            + "; lower is better",
            "paired ratio: the median of per-repetition ratios to psycopg2 Threaded (timed "
            "moments apart), not the ratio of the two medians shown; same for the overhead",
            "above lock: us above one connection in a list behind the same kind of lock, "
            "`with lock:` (with: pgpool) or acquire/try/finally (try: psycopg2.pool), the median "
            "of per-repetition differences: the pool's own bookkeeping",
            sessions_note(result["settings"]["maxconn"], rows),
            f"placement: {result['settings'].get('placement', '-')}",
        ]
        out.append(Table(title, cols, table_rows, notes))
    return out

"""Scenario 6, pooled vs unpooled: why connection pools exist at all.

Opening a PostgreSQL connection is expensive: a TCP handshake, authentication, and on the
server a brand new backend *process* (fork, catalog caches warmed from scratch). Closing it
throws all of that away. A pool pays that price once per connection instead of once per
request.

One thread runs ``SELECT 1`` over and over, four ways:

- **new connection per request**: ``psycopg2.connect()``, query, ``close()``: the code
  people write before they know about pools;
- **pgpool**, **psycopg2.pool** and **psycopg2-pool**: ``getconn()``, query, ``putconn()``;
- **raw connection reused**: the floor, one connection and no pool at all.

The headline is the ratio: how many pooled requests fit in the time of one unpooled one.
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
    fmt_sessions,
    opened,
    same_cpu,
    sessions,
    sessions_note,
    spread_column,
    spread_note,
)
from benchmarks.stats import summarize

NAME = "unpooled"
TITLE = "Pooled vs unpooled: SELECT 1 with and without a pool"
SQL = "SELECT 1"
KEYS = (
    "connect-per-request",
    "pgpool-threaded",
    "psycopg2-threaded",
    "psycopg2-pool-ts",
    "raw-psycopg2",
)
MAXCONN = 4
UNPOOLED = "connect-per-request"


def _sizes(quick: bool) -> tuple[int, int, int]:
    """(repetitions, requests per repetition unpooled, requests per repetition pooled).

    Every repetition opens fresh pools (see cycle.py: one connection's round trip can be
    much slower than another's for a while on a small machine).
    """
    return (3, 20, 200) if quick else (10, 100, 1000)


def steps(quick: bool) -> int:
    reps, _, _ = _sizes(quick)
    return reps * len(KEYS)


def _time_requests(handle: cs.Handle, n: int) -> float:
    """Microseconds per request (checkout or connect, SELECT 1, return or close)."""
    get, put, query = handle.get, handle.put, cs.run_query
    start = time.perf_counter()
    for _ in range(n):
        conn = get()
        query(conn, SQL)
        put(conn)
    return (time.perf_counter() - start) / n * 1e6


def _measure(ctx: Context, chosen: list[cs.Contender]) -> dict[str, Any]:
    """Time every contender, fresh pools each repetition; return per-contender data."""
    reps, n_unpooled, n_pooled = _sizes(ctx.quick)
    cfg = cs.PoolConfig(ctx.dsn, 1, MAXCONN, retry=False)
    samples: dict[str, list[float]] = {c.key: [] for c in chosen}
    connects = dict.fromkeys(samples, 0)  # opened while timed requests ran
    requests = dict.fromkeys(samples, 0)
    peaks: dict[str, list[int]] = {key: [] for key in samples}
    for _rep in range(reps):
        with ExitStack() as stack:
            handles = {c.key: stack.enter_context(opened(c, cfg)) for c in chosen}
            for key, handle in handles.items():
                _time_requests(handle, 5 if key == UNPOOLED else 100)  # warm-up
            for key, handle in handles.items():
                n = n_unpooled if key == UNPOOLED else n_pooled
                before = handle.opened.value
                samples[key].append(_time_requests(handle, n))
                connects[key] += handle.opened.value - before
                requests[key] += n
                ctx.advance(f"unpooled / {key}")
            for key, handle in handles.items():
                peaks[key].append(handle.opened.peak)
    return {
        key: {
            "samples": samples[key],
            "connects_per_request": connects[key] / requests[key],
            "sessions": sessions(peaks[key], MAXCONN),
        }
        for key in samples
    }


def run(ctx: Context) -> dict[str, Any]:
    reps, n_unpooled, n_pooled = _sizes(ctx.quick)
    with same_cpu(ctx) as placement:
        data = _measure(ctx, cs.select(keys=list(KEYS)))
    summaries = {key: summarize(d["samples"]) for key, d in data.items()}
    unpooled = summaries[UNPOOLED].median
    rows = {
        key: {
            "us": s.to_dict(),
            "speedup_vs_unpooled": unpooled / s.median,
            "connects_per_request": data[key]["connects_per_request"],
            "sessions": data[key]["sessions"],
        }
        for key, s in summaries.items()
    }
    return {
        "title": TITLE,
        "settings": {
            "repetitions": reps,
            "requests_unpooled": n_unpooled,
            "requests_pooled": n_pooled,
            "placement": placement,
        },
        "labels": {c.key: c.label for c in cs.CONTENDERS},
        "rows": rows,
    }


def tables(result: dict[str, Any]) -> list[Table]:
    st = result["settings"]
    cols = ["", "sessions", "us / request", "vs unpooled", "connects / request"]
    rows = result["rows"]
    us = spread_column(rows, "us", 1)
    table_rows = [
        [
            result["labels"][key],
            fmt_sessions(row.get("sessions")),
            us[key],
            fmt(row["speedup_vs_unpooled"], 1, "x"),
            fmt(row["connects_per_request"], 2),
        ]
        for key, row in rows.items()
    ]
    notes = [
        f"one thread, SELECT 1, {st['requests_unpooled']} (unpooled) / "
        f"{st['requests_pooled']:,} (pooled) requests per repetition, fresh pools each "
        "repetition; " + spread_note(st["repetitions"]),
        "vs unpooled: the unpooled median / this median (requests served in the time of "
        "one unpooled request)",
        sessions_note(MAXCONN, rows) + "; the unpooled one closes each connection it opens",
        f"placement: {st.get('placement', '-')}",
    ]
    return [Table("pooled vs unpooled: SELECT 1", cols, table_rows, notes)]

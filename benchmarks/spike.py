"""Scenario 4, spike: 50 requests arrive at once at a pool (5, 50) whose connects are slow.

HikariCP's "Welcome to the Jungle" test: a pool with 5 idle connections (max 50) is hit by
50 threads at the same instant; every new connection takes 150 ms to open (a TCP proxy
delays each connect, like a remote or TLS-heavy server), and each request holds its
connection for 2 ms of server work (``SELECT pg_sleep(0.002)``).

Opening 45 connections to serve this spike is the wrong answer: five connections can
serve 50 requests of 2 ms in about 20 ms, long before even *one* new connection is ready
at 150 ms. A pool that opens a connection for every waiter ends up with 40-50 connections
it never needed (and the server with as many backends); a pool that connects *while
holding its lock* (psycopg2.pool, psycopg2-pool, DBUtils) also stalls every other checkout
and return for 150 ms per connect.

pgpool's Threaded pool opens new connections on its connector thread, one at a time and
only while callers wait, and hands returned connections to waiters first come first
served, so the spike is served by the five it had, plus the one connect in flight.

Reported: connections opened during the spike (and after it settled), and the time until
all 50 requests were served, from the moment the threads were released. A ``--quick`` run
uses 20 ms connects, so that the pools which connect under their lock finish in seconds.
"""

from __future__ import annotations

import time
from typing import Any

from psycopg2.extensions import parse_dsn

from benchmarks import contenders as cs
from benchmarks.common import (
    Context,
    Sampler,
    Table,
    fmt,
    fmt_ratio,
    fmt_sessions,
    opened,
    run_threads,
    sessions,
    sessions_note,
    spread_column,
    spread_note,
)
from benchmarks.stats import ratio, summarize

NAME = "spike"
TITLE = "Spike: 50 threads at once, pool (5, 50), 150 ms connects, 2 ms requests"
MINCONN, MAXCONN, THREADS = 5, 50, 50
CONNECT_DELAY = 0.15
QUICK_CONNECT_DELAY = 0.02  # --quick: psycopg2.pool connects 45 times under its lock
SQL = "SELECT pg_sleep(0.002)"
TIMELINES = ("pgpool-threaded", "psycopg2-threaded", "psycopg_pool")


def _reps(quick: bool) -> int:
    return 1 if quick else 3


def _delay(quick: bool) -> float:
    return QUICK_CONNECT_DELAY if quick else CONNECT_DELAY


def _settle(delay: float) -> float:
    """Seconds to let connects already in flight finish after the spike."""
    return 3 * delay + 0.05


def _contenders() -> list[cs.Contender]:
    return cs.select(threaded=True, reference=False)


def steps(quick: bool) -> int:
    return _reps(quick) * len(_contenders())


def tcp_target(dsn: str) -> tuple[str, int] | None:
    """(host, port) of the server if it is reachable over TCP, else None (unix socket)."""
    params = parse_dsn(dsn)
    host = params.get("hostaddr") or params.get("host") or ""
    if not host or host.startswith("/") or "," in host:
        return None
    return host, int(params.get("port") or 5432)


def _spike(handle: cs.Handle, sampler: Sampler) -> tuple[float, list[float]]:
    """Release 50 threads at once; return (seconds until all served, each request's latency)."""
    get, put, query, clock = handle.get, handle.put, cs.run_query, time.perf_counter
    finished = [0.0] * THREADS
    start = 0.0

    def worker(i: int) -> None:
        conn = get()
        try:
            query(conn, SQL)
        finally:
            put(conn)
        finished[i] = clock()

    def release() -> None:
        nonlocal start
        start = clock()
        sampler.mark("spike")

    run_threads(THREADS, worker, name="spike", on_release=release)
    latencies = [f - start for f in finished]
    return max(latencies), latencies


def run(ctx: Context) -> dict[str, Any]:
    from testbed.proxy import TcpProxy

    target = tcp_target(ctx.dsn)
    result: dict[str, Any] = {
        "title": TITLE,
        "settings": {
            "minconn": MINCONN,
            "maxconn": MAXCONN,
            "threads": THREADS,
            "connect_delay_s": _delay(ctx.quick),
            "query": SQL,
            "repetitions": _reps(ctx.quick),
        },
        "labels": {c.key: c.label for c in cs.CONTENDERS},
        "rows": {},
        "timelines": {},
    }
    chosen = _contenders()
    if target is None:
        result["skipped"] = "the server is not reachable over TCP (the delaying proxy needs it)"
        for _ in range(steps(ctx.quick)):
            ctx.advance("spike / skipped")
        return result
    per_rep: dict[str, list[dict[str, Any]]] = {c.key: [] for c in chosen}
    proxy = TcpProxy(*target, connect_delay=_delay(ctx.quick)).start()
    try:
        dsn = proxy.dsn_for(ctx.dsn)
        cfg = cs.PoolConfig(dsn, MINCONN, MAXCONN)
        for rep in range(_reps(ctx.quick)):
            shift = rep % len(chosen)
            for c in chosen[shift:] + chosen[:shift]:
                with opened(c, cfg) as handle:
                    before = handle.opened.value
                    sampler = Sampler(handle, interval=0.002).start()
                    served_s, latencies = _spike(handle, sampler)
                    during = handle.opened.value - before
                    sampler.mark("all served")
                    time.sleep(_settle(_delay(ctx.quick)))
                    timeline = sampler.stop()
                    after = handle.opened.value - before
                    s = handle.state() if handle.state else None
                per_rep[c.key].append(
                    {
                        "served_s": served_s,
                        "latency_p50_s": sorted(latencies)[len(latencies) // 2],
                        "opened_during": during,
                        "opened_after_settle": after,
                        "size_after": None if s is None else s.idle + s.in_use + s.connecting,
                        "sessions": handle.opened.peak,
                    }
                )
                if rep == 0 and c.key in TIMELINES:
                    result["timelines"][c.key] = timeline
                ctx.advance(f"spike / {c.key}")
    finally:
        proxy.close()
    result["rows"] = _analyse(per_rep)
    return result


def _analyse(per_rep: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for key, reps in per_rep.items():
        rows[key] = {
            "served_s": summarize(r["served_s"] for r in reps).to_dict(),
            "latency_p50_s": summarize(r["latency_p50_s"] for r in reps).to_dict(),
            "opened_during": summarize(r["opened_during"] for r in reps).to_dict(),
            "opened_after_settle": summarize(r["opened_after_settle"] for r in reps).to_dict(),
            "sessions": sessions([r["sessions"] for r in reps], MAXCONN),
            "per_rep": reps,
        }
    base = rows.get(cs.BASELINE)
    for row in rows.values():
        row["served_vs_baseline"] = (
            ratio(row["served_s"]["median"], base["served_s"]["median"]) if base else None
        )
    return rows


def tables(result: dict[str, Any]) -> list[Table]:
    st = result["settings"]
    delay_ms = st["connect_delay_s"] * 1e3
    title = (
        f"spike: {st['threads']} threads at once, pool ({st['minconn']}, {st['maxconn']}), "
        f"{delay_ms:g} ms connects, 2 ms requests"
    )
    cols = ["contender", "sessions", "all served ms", "vs psycopg2", "p50 ms", "opened"]
    cols.append("+ in flight")
    if "skipped" in result:
        return [Table(title, cols, [], [f"skipped: {result['skipped']}"])]
    rows = result["rows"]
    served = spread_column(rows, "served_s", 0, scale=1e3)
    table_rows = [
        [
            result["labels"][key],
            fmt_sessions(row.get("sessions")),
            served[key],
            fmt_ratio(row["served_vs_baseline"]),
            fmt(row["latency_p50_s"]["median"] * 1e3, 0),
            fmt(row["opened_during"]["median"], 0),
            fmt(row["opened_after_settle"]["median"], 0),
        ]
        for key, row in rows.items()
    ]
    notes = [
        f"each new connection takes >= {delay_ms:g} ms (TCP proxy); every pool starts with "
        f"{st['minconn']} idle connections; " + spread_note(st["repetitions"]),
        "all served: from the release of the threads until the last request finished; "
        "vs psycopg2: ratio of the medians; p50: the median request's latency",
        "opened: connections opened until the last request was served (median); "
        f"+ in flight: counted {_settle(st['connect_delay_s']):g} s later",
        sessions_note(st["maxconn"], rows),
    ]
    return [Table(title, cols, table_rows, notes)]

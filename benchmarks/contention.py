"""Scenario 2, contention: many threads, few connections.

T threads (16) share a pool of M connections (4). Each thread loops: check out, run one
query, return. Most of the time three out of four threads are *waiting*, so this is where
pools differ in how they hand a returned connection to a waiter:

- **throughput** (queries per second) rewards *barging*: the thread that just returned a
  connection takes it straight back, while the others sleep (psycopg2's retry loop,
  SQLAlchemy, DBUtils). Cheap, but some threads wait a very long time;
- **checkout wait** p50 / p99 / max shows that price: the maximum is the unluckiest
  request, the one a user notices;
- **fairness** (completed requests per thread: least / most, and the coefficient of
  variation) shows whether every thread got its turn. A FIFO pool (psycopg_pool) hands
  connections over in arrival order: fair and predictable, but every handoff costs a
  thread switch.

- **sessions**: the most connections each pool had open at once. psycopg2-pool looks the
  fastest here and keeps every wait short because it does not stay within the 4 it was
  given (it never counts connections taken from its idle deque): it is marked, and no goal
  is judged against it.

Two variants: ``SELECT 1`` (the pool's handoff dominates) and ``SELECT pg_sleep(0.002)``
(2 ms of server work per request, a more typical request, where waits are long).

A third run repeats ``SELECT 1`` with the client and the server pinned to one CPU (only
with the embedded server): a FIFO handoff wakes a sleeping thread for every checkout, and
on a small virtual machine waking a thread on the *other* CPU is slow (tens of
microseconds); on one CPU that cost disappears, and what is left is the pool's own cost.
That is where the goals compare pgpool with psycopg2's retry loop; the 2-CPU gap is shown
beside the measured cost of one wake-up (benchmarks/wakeup.py, a ping-pong of two threads).
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import contenders as cs
from benchmarks import wakeup
from benchmarks.common import (
    Context,
    Table,
    fmt,
    fmt_ratio,
    fmt_sessions,
    opened,
    run_threads,
    same_cpu,
    sessions,
    sessions_note,
    spread_column,
    spread_note,
)
from benchmarks.stats import cdf_points, fairness, percentiles, ratio, summarize

NAME = "contention"
TITLE = "Contention: 16 threads share 4 connections"
THREADS, CONNECTIONS = 16, 4
VARIANTS = {
    "select1": "SELECT 1",
    "sleep2ms": "SELECT pg_sleep(0.002)",
    "select1_one_cpu": "SELECT 1",
}
VARIANT_TITLES = {
    "select1": "SELECT 1",
    "sleep2ms": "2 ms server work",
    "select1_one_cpu": "SELECT 1, everything on one CPU",
}
ONE_CPU = "select1_one_cpu"  # where the goals compare pgpool with psycopg2's retry loop


def _sizes(quick: bool) -> tuple[int, float, float]:
    """(repetitions, seconds per repetition, seconds of unrecorded warm-up load)."""
    return (1, 0.2, 0.05) if quick else (3, 2.0, 0.2)


def _contenders() -> list[cs.Contender]:
    return cs.select(threaded=True, reference=False)


def steps(quick: bool) -> int:
    reps, _, _ = _sizes(quick)
    return reps * len(VARIANTS) * len(_contenders())


def load(
    handle: cs.Handle, sql: str, threads: int, duration: float
) -> tuple[list[int], list[list[float]], float]:
    """`threads` threads loop checkout/query/return for `duration` seconds.

    Returns the requests each thread completed before the deadline, every checkout wait
    (seconds, per thread) and the measured duration.
    """
    get, put, query = handle.get, handle.put, cs.run_query
    counts = [0] * threads
    waits: list[list[float]] = [[] for _ in range(threads)]
    clock = time.perf_counter
    deadline = float("inf")

    def worker(i: int) -> None:
        mine = waits[i]
        done = 0
        while True:
            start = clock()
            if start >= deadline:
                break
            conn = get()
            mine.append(clock() - start)
            try:
                query(conn, sql)
            finally:
                put(conn)
            if clock() <= deadline:
                done += 1
        counts[i] = done

    def release() -> None:
        nonlocal deadline
        deadline = clock() + duration

    run_threads(threads, worker, name="contention", on_release=release)
    return counts, waits, duration


def run(ctx: Context) -> dict[str, Any]:
    reps, duration, _warmup = _sizes(ctx.quick)
    chosen = _contenders()
    cfg = cs.PoolConfig(ctx.dsn, CONNECTIONS, CONNECTIONS)
    variants: dict[str, Any] = {}
    for variant, sql in VARIANTS.items():
        if variant != ONE_CPU:
            variants[variant] = _run_variant(ctx, variant, sql, chosen, cfg)
            continue
        with same_cpu(ctx) as placement:
            if placement.startswith("not controlled"):
                for _ in range(reps * len(chosen)):
                    ctx.advance(f"contention / {VARIANT_TITLES[variant]} / skipped")
            else:
                variants[variant] = _run_variant(ctx, variant, sql, chosen, cfg)
                variants[variant]["placement"] = placement
    return {
        "title": TITLE,
        "settings": {
            "threads": THREADS,
            "connections": CONNECTIONS,
            "repetitions": reps,
            "seconds": duration,
        },
        "labels": {c.key: c.label for c in cs.CONTENDERS},
        "variants": variants,
        # The cost of the wake-up every in-order hand-off pays: goals.py judges the 2-CPU
        # figures beside it (benchmarks/wakeup.py).
        "wakeup": wakeup.measure(ctx.quick),
    }


def _run_variant(
    ctx: Context, variant: str, sql: str, chosen: list[cs.Contender], cfg: cs.PoolConfig
) -> dict[str, Any]:
    reps, duration, warmup = _sizes(ctx.quick)
    per_rep: dict[str, list[dict[str, Any]]] = {c.key: [] for c in chosen}
    all_waits: dict[str, list[float]] = {c.key: [] for c in chosen}
    for rep in range(reps):
        shift = rep % len(chosen)
        for c in chosen[shift:] + chosen[:shift]:
            with opened(c, cfg) as handle:
                load(handle, sql, THREADS, warmup)
                counts, waits, elapsed = load(handle, sql, THREADS, duration)
                peak = handle.opened.peak
            flat = [w for thread in waits for w in thread]
            all_waits[c.key].extend(flat)
            per_rep[c.key].append({**_measure(counts, flat, elapsed), "sessions": peak})
            ctx.advance(f"contention / {VARIANT_TITLES[variant]} / {c.key}")
    return _analyse(chosen, per_rep, all_waits, cfg.maxconn)


def _measure(counts: list[int], waits: list[float], elapsed: float) -> dict[str, Any]:
    p50, p99, top = percentiles(waits, [50, 99, 100]) if waits else (0.0, 0.0, 0.0)
    fair = fairness(counts)
    return {
        "qps": sum(counts) / elapsed,
        "wait_p50_ms": p50 * 1e3,
        "wait_p99_ms": p99 * 1e3,
        "wait_max_ms": top * 1e3,
        "fair_min_max": fair.min_max_ratio,
        "fair_cv": fair.cv,
        "fair_jain": fair.jain,
        "counts": counts,
    }


METRICS = ("qps", "wait_p50_ms", "wait_p99_ms", "wait_max_ms", "fair_min_max", "fair_cv")


def _analyse(
    chosen: list[cs.Contender],
    per_rep: dict[str, list[dict[str, Any]]],
    all_waits: dict[str, list[float]],
    maxconn: int,
) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for c in chosen:
        reps = per_rep[c.key]
        row: dict[str, Any] = {m: summarize(r[m] for r in reps).to_dict() for m in METRICS}
        row["counts"] = [r["counts"] for r in reps]
        row["sessions"] = sessions([r["sessions"] for r in reps], maxconn)
        xs, ys = cdf_points(w * 1e3 for w in all_waits[c.key])
        row["wait_cdf_ms"] = {"x": xs, "y": ys, "n": len(all_waits[c.key])}
        rows[c.key] = row
    base = rows.get(cs.BASELINE)
    for row in rows.values():
        row["qps_vs_baseline"] = (
            ratio(row["qps"]["median"], base["qps"]["median"]) if base else None
        )
    return {"rows": rows}


def tables(result: dict[str, Any]) -> list[Table]:
    out = []
    labels = result["labels"]
    st = result["settings"]
    for variant, data in result["variants"].items():
        title = (
            f"contention: {st['threads']} threads / {st['connections']} connections, "
            f"{VARIANT_TITLES[variant]}"
        )
        cols = ["contender", "sessions", "queries/s", "vs psycopg2", "p99 ms", "max wait ms"]
        cols.append("fair")
        rows = data["rows"]
        qps = spread_column(rows, "qps", 0)
        top = spread_column(rows, "wait_max_ms", 1)
        table_rows = [
            [
                labels[key],
                fmt_sessions(row.get("sessions")),
                qps[key],
                fmt_ratio(row["qps_vs_baseline"]),
                fmt(row["wait_p99_ms"]["median"], 2),
                top[key],
                fmt(row["fair_min_max"]["median"], 2),
            ]
            for key, row in rows.items()
        ]
        notes = [
            spread_note(st["repetitions"], f"repetitions of {st['seconds']:g} s"),
            "vs psycopg2: ratio of the two q/s medians; p99 and max wait: checkout waits, "
            "max wait = median of each repetition's maximum",
            "fair: least / most requests completed by one thread (median; 1.0 = even, "
            "0.00 = a thread starved)",
            "psycopg2 and psycopg2-pool raise when exhausted: they run inside a retry loop "
            "(sleep 1 ms, retry), as their users must write",
            sessions_note(st["connections"], rows),
        ]
        if "placement" in data:
            notes.append(f"placement: {data['placement']} (what the goals compare with psycopg2)")
        woken = wakeup.note(result.get("wakeup"))
        if woken is not None:
            notes.append(woken)
        out.append(Table(title, cols, table_rows, notes))
    return out

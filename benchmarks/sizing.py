"""Scenario 7, pool sizing: throughput and latency against `maxconn`, threads fixed.

How many connections should a pool have? HikariCP's "About Pool Sizing" argues: fewer than
you think. A database server has a few CPU cores; once every core is busy, another
connection adds no work done, only more queries sharing the cores, each taking longer.
Little's law says the same from the other side: the connections a load keeps busy are
throughput x time per request (L = λW), so connections beyond that only hold more requests
*inside* the server instead of in the pool's queue, where they would wait anyway.

32 threads send requests through one pgpool ThreadedConnectionPool ``(maxconn, maxconn)``
(opened up front), for each ``maxconn`` in turn. The query mix, per thread, repeats:
three CPU-bound queries (``SELECT sum(i) FROM generate_series(1, 20000)``, about a
millisecond of server CPU each), then one that waits without using the CPU
(``SELECT pg_sleep(0.005)``, standing in for disk, a lock or a remote call).

Measured per ``maxconn``: queries per second; the latency of a whole request (checkout
wait + query + return) at p50 and p99; and the query alone (its time on the
connection). The client (32 Python threads) runs on the same machine as the server and
competes with it for the same cores, so the numbers describe this machine, not a rule.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from benchmarks import contenders as cs
from benchmarks.common import (
    Context,
    Table,
    fmt,
    fmt_sessions,
    opened,
    run_threads,
    sessions,
    spread_column,
    spread_note,
)
from benchmarks.stats import percentiles, summarize

if TYPE_CHECKING:
    from matplotlib.figure import Figure

NAME = "sizing"
TITLE = "Pool sizing: 32 threads, maxconn from 1 to 32"
THREADS = 32
CPU_SQL = "SELECT sum(i) FROM generate_series(1, 20000) AS i"
WAIT_SQL = "SELECT pg_sleep(0.005)"
MIX = (CPU_SQL, CPU_SQL, CPU_SQL, WAIT_SQL)  # what each thread runs, over and over
CONTENDER = "pgpool-threaded"


def _sizes(quick: bool) -> tuple[tuple[int, ...], int, float, float]:
    """(maxconn values, repetitions, seconds per run, seconds of warm-up per run)."""
    if quick:
        return (1, 4, 16), 1, 0.3, 0.1
    return (1, 2, 3, 4, 6, 8, 12, 16, 24, 32), 2, 2.0, 0.3


def steps(quick: bool) -> int:
    sizes, reps, _, _ = _sizes(quick)
    return len(sizes) * reps


def _load(handle: cs.Handle, duration: float) -> tuple[int, list[float], list[float]]:
    """THREADS threads run the mix for `duration` s; (requests, request s, query s)."""
    get, put, query = handle.get, handle.put, cs.run_query
    clock = time.perf_counter
    deadline = float("inf")
    requests: list[list[float]] = [[] for _ in range(THREADS)]
    queries: list[list[float]] = [[] for _ in range(THREADS)]

    def worker(i: int) -> None:
        mine_r, mine_q = requests[i], queries[i]
        n = i  # threads start at different points of the mix
        while True:
            start = clock()
            if start >= deadline and mine_r:
                return
            conn = get()
            began = clock()
            try:
                query(conn, MIX[n % len(MIX)])
            finally:
                ended = clock()
                put(conn)
            # A request that ends after the deadline is not counted, unless it is the
            # thread's first: on a loaded machine a thread may get the CPU only after the
            # deadline, and a run where no request counted would leave nothing to measure.
            if clock() <= deadline or not mine_r:
                mine_r.append(clock() - start)
                mine_q.append(ended - began)
            n += 1

    def release() -> None:
        nonlocal deadline
        deadline = clock() + duration

    run_threads(THREADS, worker, name="sizing", on_release=release)
    flat_r = [x for thread in requests for x in thread]
    flat_q = [x for thread in queries for x in thread]
    return len(flat_r), flat_r, flat_q


def _one_run(ctx: Context, maxconn: int) -> dict[str, float]:
    _, _, duration, warmup = _sizes(ctx.quick)
    contender = cs.BY_KEY[CONTENDER]
    # No health checks or maintenance in the way: the pool is full from the start.
    cfg = cs.PoolConfig(ctx.dsn, maxconn, maxconn, {"maintenance_interval": None})
    with opened(contender, cfg) as handle:
        _load(handle, warmup)
        count, reqs, qs = _load(handle, duration)
        peak = handle.opened.peak
    r50, r99 = percentiles(reqs, [50, 99])
    q50, q99 = percentiles(qs, [50, 99])
    qps = count / duration
    return {
        "qps": qps,
        "request_p50_ms": r50 * 1e3,
        "request_p99_ms": r99 * 1e3,
        "query_p50_ms": q50 * 1e3,
        "query_p99_ms": q99 * 1e3,
        # Little's law: connections busy on average = throughput x time each is held.
        "busy": qps * (sum(qs) / len(qs)),
        "sessions": peak,  # the most connections open at once
    }


METRICS = ("qps", "request_p50_ms", "request_p99_ms", "query_p50_ms", "query_p99_ms", "busy")


def run(ctx: Context) -> dict[str, Any]:
    sizes, reps, duration, _ = _sizes(ctx.quick)
    runs: dict[int, list[dict[str, float]]] = {n: [] for n in sizes}
    for rep in range(reps):
        # Alternate the order, so a slow patch of the machine does not hit one end only.
        for n in sizes if rep % 2 == 0 else tuple(reversed(sizes)):
            runs[n].append(_one_run(ctx, n))
            ctx.advance(f"sizing / maxconn {n}")
    rows = {
        str(n): {
            **{m: summarize(r[m] for r in results).to_dict() for m in METRICS},
            "sessions": sessions([int(r["sessions"]) for r in results], n),
        }
        for n, results in runs.items()
    }
    return {
        "title": TITLE,
        "settings": {
            "threads": THREADS,
            "mix": list(MIX),
            "repetitions": reps,
            "seconds": duration,
            "contender": CONTENDER,
        },
        "rows": rows,
    }


def tables(result: dict[str, Any]) -> list[Table]:
    st = result["settings"]
    cols = [
        "maxconn",
        "queries/s",
        "req p50 ms",
        "req p99 ms",
        "query p50 ms",
        "query p99 ms",
        "busy (λW)",
    ]
    qps = spread_column(result["rows"], "qps", 0)
    rows = [
        [
            n,
            qps[n],
            fmt(row["request_p50_ms"]["median"], 1),
            fmt(row["request_p99_ms"]["median"], 1),
            fmt(row["query_p50_ms"]["median"], 2),
            fmt(row["query_p99_ms"]["median"], 2),
            fmt(row["busy"]["median"], 1),
        ]
        for n, row in result["rows"].items()
    ]
    notes = [
        f"{st['threads']} threads, pgpool Threaded (maxconn, maxconn); "
        + spread_note(st["repetitions"], f"runs of {st['seconds']:g} s per maxconn")
        + " (queries/s; the other columns are medians)",
        "mix per thread: 3 x generate_series(1, 20000) (CPU), 1 x pg_sleep(0.005) (waiting)",
        "sessions (most connections open at once), per maxconn: "
        + ", ".join(
            f"{n} -> {fmt_sessions(row.get('sessions'))}" for n, row in result["rows"].items()
        ),
        "req (request) = checkout wait + query + return; busy = queries/s x mean query time "
        "(Little's law: connections actually working, on average)",
    ]
    return [Table("sizing: throughput and latency against maxconn", cols, rows, notes)]


def plots(result: dict[str, Any]) -> list[tuple[str, Figure]]:
    """Throughput, and p99 latency of requests and of queries, against maxconn."""
    # Imported here: plots.write_plots calls this after selecting the headless backend.
    import matplotlib.pyplot as plt

    sizes = [int(n) for n in result["rows"]]
    rows = list(result["rows"].values())

    def med(metric: str) -> list[float]:
        return [row[metric]["median"] for row in rows]

    fig = plt.figure(figsize=(11, 4), layout="constrained")
    left, right = fig.subplots(1, 2)
    left.plot(sizes, med("qps"), marker="o", color="#1f5fbf")
    left.set_ylabel("queries per second")
    left.set_title("throughput", fontsize=10)
    right.plot(sizes, med("request_p99_ms"), marker="o", color="#d9534f", label="request p99")
    right.plot(sizes, med("query_p99_ms"), marker="s", color="#f0ad4e", label="query p99")
    right.plot(sizes, med("query_p50_ms"), marker=".", color="#999999", label="query p50")
    right.set_ylabel("ms")
    right.set_title("latency (request = wait + query)", fontsize=10)
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.set_xlabel(f"maxconn ({result['settings']['threads']} threads)")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    fig.suptitle("sizing: what more connections buy")
    return [("sizing", fig)]

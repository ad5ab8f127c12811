"""Scenario 7, fleet: N application processes, each with its own pgpool, directly against
PostgreSQL and through PgBouncer.

This is how an application that outgrows one process is deployed: several worker
processes (gunicorn workers, say), each with a pool of ``maxconn`` connections and as many
threads. Directly, the server sees ``processes x maxconn`` connections, and that product
must stay under its ``max_connections``. Through PgBouncer in transaction mode, the same
``processes x maxconn`` client connections share ``default_pool_size`` server connections:
the server's share is bounded by PgBouncer, at the price of one more hop per transaction
and of waiting in PgBouncer's queue when every server connection is busy.

Each process runs ``threads`` threads for a fixed time, each looping: check out, run one
short transaction (the query, then COMMIT), return. Two queries: ``SELECT 1`` (the cost of
the path itself, CPU bound on a small machine) and ``SELECT pg_sleep(0.002)`` (a query that
keeps its server connection busy for 2 ms, so the number of server connections limits the
throughput). Reported per configuration: transactions per second summed over the
processes, the p99 of one request's latency (checkout to return), and the most server and
client connections sampled during the run (``pg_stat_activity`` for direct connections,
PgBouncer's ``SHOW POOLS`` through it).

The PgBouncer rows need the ``pgbouncer`` binary and a server that trusts the bench's user
on TCP (the embedded one does); without them the scenario reports the direct rows only.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import threading
import time
from array import array
from collections.abc import Iterator
from typing import Any

from psycopg2.extensions import make_dsn, parse_dsn

from benchmarks.common import Context, Table, fmt, spread_column, spread_note
from benchmarks.stats import percentiles, summarize

NAME = "fleet"
TITLE = "Fleet: 8 processes x a pgpool each, directly and through PgBouncer"
PROCESSES, MAXCONN = 8, 4  # threads per process = maxconn: nobody waits in pgpool
QUERIES = {"select1": "SELECT 1", "sleep2ms": "SELECT pg_sleep(0.002)"}
# (key, label, PgBouncer's default_pool_size or None for direct connections)
CONFIGS: list[tuple[str, str, int | None]] = [
    ("direct", "direct", None),
    ("pgbouncer-16", "PgBouncer pool 16", 16),  # transaction mode, default_pool_size 16
    ("pgbouncer-8", "PgBouncer pool 8", 8),
    # The same PgBouncer pool of 16, with a NullConnectionPool(0, 4) in each process: no
    # connection kept between requests, a connect to PgBouncer for each one.
    ("null-pgbouncer-16", "null pool, PgBouncer 16", 16),
    # The sizing rule broken, then fixed: a second server that leaves the application's
    # role only LIMIT connections, fewer than its processes (8, wanting 32).
    ("limited-direct", "direct, 6 allowed", None),
    ("limited-pgbouncer-6", "PgBouncer 6, 6 allowed", 6),
]
LIMITED = {"limited-direct", "limited-pgbouncer-6"}
NULL_POOL = {"null-pgbouncer-16"}  # rows whose processes use pgpool.NullConnectionPool
# Connections the limited server leaves the application's role: fewer than the processes,
# so that some process surely gets none (with more, which process gets how many is a race,
# and threads of a process short of connections just take turns on the ones it has).
LIMIT = 6
APP_ROLE = "fleet_app"  # not a superuser: superuser_reserved_connections stay for admin
# Short names for the table's query column (it must fit 100 columns with the rest).
QUERY_NAMES = {"select1": "SELECT 1", "sleep2ms": "2 ms sleep"}
WARMUP = 0.5  # seconds of each run left out of the figures


def _sizes(quick: bool) -> tuple[int, float, dict[str, str]]:
    """(repetitions, seconds measured per run, queries)."""
    if quick:
        return 1, 1.0, {"select1": QUERIES["select1"]}
    return 2, 4.0, QUERIES


def steps(quick: bool) -> int:
    reps, _, queries = _sizes(quick)
    return reps * len(CONFIGS) * len(queries)


# -- one application process ------------------------------------------------------------------


def _process(dsn: str, sql: str, seconds: float, ready: Any, out: Any, null: bool) -> None:
    """One application process: makes a pool of up to MAXCONN (a NullConnectionPool with
    `null`, else a ThreadedConnectionPool), waits for the whole fleet
    at `ready`, then runs MAXCONN threads looping on transactions for WARMUP + `seconds`;
    sends (latencies in s of the requests after the warm-up, errors).

    minconn is 0 so that a process the server refuses still starts (and counts its
    failed requests); under load each thread opens its connection in the warm-up."""
    import logging

    import pgpool

    # The "6 allowed" rows are refused on purpose, and this process counts the refusals
    # itself: the pool's warning about them on stderr would read as the bench failing.
    logging.getLogger("pgpool").setLevel(logging.ERROR)
    pool_class = pgpool.NullConnectionPool if null else pgpool.ThreadedConnectionPool
    pool = pool_class(0, MAXCONN, dsn, timeout=30)
    latencies = [array("d") for _ in range(MAXCONN)]
    errors = [0] * MAXCONN
    ready.wait()  # every process has its connections: start together
    start = time.monotonic()
    measure_from, stop = start + WARMUP, start + WARMUP + seconds

    def worker(i: int) -> None:
        clock, record, connection = time.monotonic, latencies[i].append, pool.connection
        while (now := clock()) < stop:
            try:
                with connection() as conn, conn.cursor() as cur:
                    cur.execute(sql)
            except Exception:
                errors[i] += 1
                time.sleep(0.01)  # a refused connect fails fast: do not spin on it
                continue
            if now >= measure_from:
                record(clock() - now)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(MAXCONN)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pool.closeall()
    merged = array("d")
    for part in latencies:
        merged.extend(part)
    out.send((merged.tobytes(), sum(errors), pool.stats().connections_opened))
    out.close()


# -- the fleet ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _bouncer(dsn: str, pool_size: int) -> Iterator[Any]:
    from testbed.pgbouncer import PgBouncer

    params = parse_dsn(dsn)
    bouncer = PgBouncer(
        params.get("host", "127.0.0.1"),
        int(params.get("port", 5432)),
        pool_mode="transaction",
        database=params.get("dbname", "postgres"),
        default_pool_size=pool_size,
        max_client_conn=PROCESSES * MAXCONN + 20,
        users=[params.get("user", "postgres")],
    )
    with bouncer:
        yield bouncer


def _bouncer_unavailable(dsn: str) -> str | None:
    """Why the PgBouncer rows cannot run against `dsn`, or None if they can."""
    from testbed.pgbouncer import MISSING, find_pgbouncer

    if find_pgbouncer() is None:
        return MISSING
    params = parse_dsn(dsn)
    host = params.get("host", "")
    # One TCP host: PgBouncer forwards to a host and port, not a socket or a host list.
    if params.get("password") or not host or host.startswith("/") or "," in host:
        return "PgBouncer rows need one TCP server that trusts the user (no password)"
    return None


def _count_direct(admin_dsn: str, app: str) -> tuple[int, int]:
    from testbed.embedded import run_sql

    rows = run_sql(
        admin_dsn, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app,)
    )
    n = rows[0][0] if rows else 0
    return n, n  # direct: each client connection is a server connection


def _count_bouncer(bouncer: Any) -> tuple[int, int]:
    row = bouncer.pool_row()
    server = sum(
        row.get(k, 0) for k in ("sv_active", "sv_idle", "sv_used", "sv_tested", "sv_login")
    )
    client = row.get("cl_active", 0) + row.get("cl_waiting", 0)
    return server, client


def _run_fleet(
    dsn: str,
    admin_dsn: str,
    sql: str,
    pool_size: int | None,
    seconds: float,
    null: bool = False,
) -> dict[str, Any]:
    """One run of the fleet against `dsn` (through a PgBouncer of `pool_size` if given,
    each process with a NullConnectionPool if `null`); `admin_dsn` counts the server's
    connections."""
    app = f"pgpool-fleet-{os.getpid()}-{time.monotonic_ns() % 10**6}"
    with contextlib.ExitStack() as stack:
        if pool_size is None:
            client_dsn = make_dsn(dsn, application_name=app)

            def count() -> tuple[int, int]:
                return _count_direct(admin_dsn, app)
        else:
            bouncer = stack.enter_context(_bouncer(dsn, pool_size))
            user = parse_dsn(dsn).get("user", "postgres")
            client_dsn = make_dsn(bouncer.dsn, application_name=app, user=user)

            def count() -> tuple[int, int]:
                return _count_bouncer(bouncer)

        # spawn: each process starts as a fresh interpreter, like a server's workers.
        spawn = multiprocessing.get_context("spawn")
        ready = spawn.Barrier(PROCESSES + 1, timeout=120)
        pipes, procs = [], []
        for _ in range(PROCESSES):
            receive, send = spawn.Pipe(duplex=False)
            proc = spawn.Process(
                target=_process, args=(client_dsn, sql, seconds, ready, send, null)
            )
            proc.start()
            send.close()
            pipes.append(receive)
            procs.append(proc)
        ready.wait()
        start = time.monotonic()
        stop = start + WARMUP + seconds
        most_server = most_client = 0
        while time.monotonic() < stop:
            if time.monotonic() > start + WARMUP:
                server, client = count()
                most_server, most_client = max(most_server, server), max(most_client, client)
            time.sleep(0.1)
        latencies = array("d")
        errors = starved = connects = 0
        for receive in pipes:
            raw, errs, opened = receive.recv()
            connects += opened
            part = array("d")
            part.frombytes(raw)
            latencies.extend(part)
            errors += errs
            starved += not part  # served no request in the measured window
        for proc in procs:
            proc.join(30)
    p50, p99 = percentiles(latencies, (50, 99)) if latencies else (math.nan, math.nan)
    return {
        "tps": len(latencies) / seconds,
        "p50_ms": p50 * 1e3,
        "p99_ms": p99 * 1e3,
        "errors": errors,
        "starved_processes": starved,
        "server_connections": most_server,
        "client_connections": most_client,
        "connects": connects,  # connections the processes' pools opened, warm-up included
    }


@contextlib.contextmanager
def _limited_server() -> Iterator[tuple[str, str]]:
    """A second embedded server whose max_connections leaves LIMIT connections to the
    application's role (the superuser keeps the reserved ones, to count sessions);
    yields (the application's DSN, an admin DSN)."""
    from testbed.embedded import EmbeddedPostgres

    with EmbeddedPostgres(max_connections=LIMIT + 3) as server:  # 3 reserved by default
        server.execute(f"CREATE ROLE {APP_ROLE} LOGIN")
        yield make_dsn(server.dsn, user=APP_ROLE), server.dsn


def run(ctx: Context) -> dict[str, Any]:
    reps, seconds, queries = _sizes(ctx.quick)
    unavailable = _bouncer_unavailable(ctx.dsn)
    # The limited server is a second embedded one: only when this run started its own
    # (with --dsn the bench starts no server of its own).
    limited = ctx.server_pid is not None
    configs = [
        c
        for c in CONFIGS
        if (c[2] is None or unavailable is None) and (c[0] not in LIMITED or limited)
    ]
    from testbed.embedded import run_sql

    rows_ = run_sql(ctx.dsn, "SELECT current_setting('max_connections')::int")
    max_connections = rows_[0][0] if rows_ else None
    per_rep: dict[str, dict[str, list[dict[str, Any]]]] = {q: {} for q in queries}
    with contextlib.ExitStack() as stack:
        if any(c[0] in LIMITED for c in configs):
            limited_dsn, limited_admin = stack.enter_context(_limited_server())
        for rep in range(reps):
            for query, sql in queries.items():
                shift = rep % len(configs)
                for key, _label, pool_size in configs[shift:] + configs[:shift]:
                    if key in LIMITED:
                        dsn, admin = limited_dsn, limited_admin
                    else:
                        dsn, admin = ctx.dsn, ctx.dsn
                    result = _run_fleet(dsn, admin, sql, pool_size, seconds, key in NULL_POOL)
                    per_rep[query].setdefault(key, []).append(result)
                    ctx.advance(f"fleet / {query} / {key}")
            for _ in range((len(CONFIGS) - len(configs)) * len(queries)):  # skipped rows
                ctx.advance("fleet")
    rows: dict[str, dict[str, Any]] = {}
    for query, by_key in per_rep.items():
        rows[query] = {}
        for key, runs in by_key.items():
            rows[query][key] = {
                "tps": summarize(r["tps"] for r in runs).to_dict(),
                "p99_ms": summarize(r["p99_ms"] for r in runs).to_dict(),
                "p50_ms": summarize(r["p50_ms"] for r in runs).to_dict(),
                "errors": sum(r["errors"] for r in runs),
                "starved_processes": max(r.get("starved_processes", 0) for r in runs),
                "server_connections": max(r["server_connections"] for r in runs),
                "client_connections": max(r["client_connections"] for r in runs),
                "connects": max(r.get("connects", 0) for r in runs),
                "per_rep": runs,
            }
    return {
        "title": TITLE,
        "settings": {
            "processes": PROCESSES,
            "maxconn": MAXCONN,
            "threads_per_process": MAXCONN,
            "seconds": seconds,
            "warmup_s": WARMUP,
            "repetitions": reps,
            "queries": queries,
            "max_connections": max_connections,
            "pgbouncer": unavailable or "transaction mode",
            "limited": (
                f"a second server leaving {LIMIT} connections to the application's role"
                if limited
                else "not run: the bench did not start its own server (--dsn)"
            ),
        },
        "labels": {key: label for key, label, _ in CONFIGS},
        "pool_sizes": {key: size for key, _, size in CONFIGS},
        "rows": rows,
    }


def tables(result: dict[str, Any]) -> list[Table]:
    st = result["settings"]
    cols = ["configuration", "query", "tx/s", "p50 ms", "p99 ms", "server", "client", "errors"]
    rows = []
    for query, by_key in result["rows"].items():
        tps = spread_column(by_key, "tps", 0)  # noise judged among the same query's rows
        for key, row in by_key.items():
            rows.append(
                [
                    result["labels"][key],
                    QUERY_NAMES.get(query, query),
                    tps[key],
                    fmt(row["p50_ms"]["median"], 2),
                    fmt(row["p99_ms"]["median"], 2),
                    str(row["server_connections"]),
                    str(row["client_connections"]),
                    str(row["errors"]),
                ]
            )
    notes = [
        f"{st['processes']} processes x a ThreadedConnectionPool(0, {st['maxconn']}) with "
        f"{st['threads_per_process']} threads each: {st['processes'] * st['maxconn']} client "
        f"connections; server max_connections {st['max_connections']}",
        f"{st['warmup_s']:g} s warm-up, then "
        + spread_note(st["repetitions"], f"runs of {st['seconds']:g} s")
        + "; latency = checkout + transaction + return",
        "direct: straight to PostgreSQL; PgBouncer: in transaction mode, default_pool_size "
        "16 or 8; 2 ms sleep: SELECT pg_sleep(0.002)",
        f"null pool: a NullConnectionPool(0, {st['maxconn']}) per process instead, which "
        "closes each connection on return and connects again for the next request",
        "tx/s: transactions per second; server / client: the most connections seen, sampled "
        "every 0.1 s (pg_stat_activity directly, SHOW POOLS through PgBouncer)",
        f"PgBouncer: {st['pgbouncer']}; {LIMIT} allowed: {st.get('limited', 'not run')}",
    ]
    # How many connections the pools opened tells the null pool (one per request) from the
    # others (each connection kept for the whole run).
    kept = [r["connects"] for rs in result["rows"].values() for k, r in rs.items()
            if "connects" in r and k not in NULL_POOL]  # fmt: skip
    null = [
        f"{r['connects']:,} ({QUERY_NAMES.get(query, query)})"
        for query, rs in result["rows"].items()
        for k, r in rs.items()
        if "connects" in r and k in NULL_POOL
    ]
    if kept or null:
        notes.append(
            "connections the pools opened (the most in one run, warm-up included): "
            + (f"at most {max(kept)} in the other rows" if kept else "")
            + (f"; null pool {', '.join(null)}" if null else "")
        )
    starved = [
        f"{result['labels'][key]} ({QUERY_NAMES.get(query, query)}): {row['starved_processes']}"
        for query, by_key in result["rows"].items()
        for key, row in by_key.items()
        if row.get("starved_processes")
    ]
    if starved:
        notes.append("processes that served no request (no connection): " + "; ".join(starved))
    return [Table(f"fleet: {TITLE.split(': ', 1)[1]}", cols, rows, notes)]


def plot(result: dict[str, Any]) -> list[tuple[str, Any]]:
    """Transactions/s and p99 per configuration, one panel per query; connections in labels."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    queries = list(result["rows"])
    # Wide enough for the title even with one query (a --quick run); laid out to fit it.
    fig, axes = plt.subplots(
        2,
        len(queries),
        figsize=(max(8.0, 5.5 * len(queries)), 6.5),
        squeeze=False,
        layout="constrained",
    )
    for col, query in enumerate(queries):
        by_key = result["rows"][query]
        keys = list(by_key)
        # A row whose requests failed says so on its bar: its throughput is that of the
        # requests that got a connection, not a gain.
        labels = []
        for k in keys:
            row = by_key[k]
            lines = [result["labels"][k]]
            lines.append(f"{row['server_connections']} server / {row['client_connections']} client")
            if row["errors"]:
                lines.append(f"{row['errors']} requests FAILED")
            if row.get("starved_processes"):
                lines.append(f"{row['starved_processes']} processes served NOTHING")
            labels.append("\n".join(lines))
        tps = [by_key[k]["tps"]["median"] for k in keys]
        p99 = [by_key[k]["p99_ms"]["median"] for k in keys]
        colors = ["#4c72b0" if result["pool_sizes"][k] is None else "#dd8452" for k in keys]
        hatches = [
            "//" if by_key[k]["errors"] or by_key[k].get("starved_processes") else "" for k in keys
        ]
        axes[0][col].barh(labels, tps, color=colors, hatch=hatches, edgecolor="white")
        axes[0][col].set_title(f"{result['settings']['queries'][query]}: transactions/s")
        axes[1][col].barh(labels, p99, color=colors, hatch=hatches, edgecolor="white")
        axes[1][col].set_title("p99 latency, ms (lower is better)")
        for ax in (axes[0][col], axes[1][col]):
            ax.invert_yaxis()
            ax.tick_params(axis="y", labelsize=8)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,g}"))
    st = result["settings"]
    fig.suptitle(
        f"fleet: {st['processes']} processes x pgpool(maxconn {st['maxconn']}), "
        "directly and through PgBouncer"
    )
    return [("fleet", fig)]

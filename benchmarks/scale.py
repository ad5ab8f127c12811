"""Scenario 5, scale: does a checkout cost the same with 1000 connections or 256 threads?

Every pool operation should be O(1): taking an idle connection, recording the lease,
taking the return. If a pool scans a list somewhere, the cost grows with its size and a
big pool gets slower exactly when the application is busiest. To see only the pool's
own cost, the connections here are *stubs*: tiny fake objects that answer the few calls a
pool makes (closed, transaction status, rollback...) and never touch a network. pgpool
gets them through its ``connector=`` option; psycopg2.pool and psycopg2-pool through a
subclass that overrides ``_connect``; SQLAlchemy and DBUtils through their ``creator``.
psycopg_pool only accepts real psycopg 3 connections and is left out.

Two axes:

- **maxconn** 1 -> 1000, one thread: a pool (N, N) with all N connections open, timed
  over many checkout + return cycles; once with all N idle, once with N - 1 of them
  checked out and held (so the pool's bookkeeping of leases is as big as it gets);
- **threads** 1 -> 256: T threads, each cycling on a pool (T, T) (nobody ever waits), for
  a fixed time; the cost is wall time / total cycles. With the GIL only one thread runs
  at a time, so a flat line means the pool adds no contention cost of its own.

The goals: at maxconn 1000 within 1.25x of maxconn 4; at 256 threads, a growth over
1 thread no larger than SQLAlchemy's QueuePool's (the best peer in past full runs).
The last row, a bare ``threading.Lock`` around a list, is the floor of every lock-based
pool: on a multi-core machine CPython makes a contended lock cost a thread switch (the
waiter sleeps in the kernel, then has to win the GIL back), so even this grows with the
thread count. A pool's own scaling is best judged against that row.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any, cast

import psycopg2.extensions
import psycopg2.pool

from benchmarks import contenders as cs
from benchmarks.common import ONCE, Context, Table, fmt, no_gc, run_threads
from benchmarks.stats import Summary, summarize

NAME = "scale"
TITLE = "Scale: checkout cost as the pool and the thread count grow (stub connections)"
MAXCONNS = (1, 4, 16, 64, 256, 1000)
THREADS = (1, 2, 4, 16, 64, 256)
REF_MAXCONN, REF_THREADS = 4, 1  # what the largest sizes are compared with


class StubCursor:
    def execute(self, sql: str, params: Any = None) -> None:
        pass

    def fetchone(self) -> tuple[int]:
        return (1,)

    def close(self) -> None:
        pass

    def __enter__(self) -> StubCursor:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


_pair: tuple[int, int] | None = None  # the descriptors of a socketpair


def _quiet_fd() -> int:
    """A socket that never has anything to read: one end of a socket pair kept open.

    Pools may poll their idle connections' sockets to spot dead ones; a stub's socket
    must look like a healthy idle connection's: silent. It must be a socket, not a pipe:
    pgpool pings a connection that has been idle longer than `health_check_after`, and a
    ping arms the watchdog, which needs a socket to cut. On a quiet machine no stub is ever
    idle that long, so a pipe went unnoticed; on a loaded one the bench itself runs slowly
    enough for it, and every such checkout raised OSError (ENOTSOCK) out of `getconn`.
    """
    global _pair
    if _pair is None:
        # Both ends stay open for the life of the process, as bare descriptors: a socket
        # object still open at exit is reported as an unclosed-socket ResourceWarning.
        ours, theirs = socket.socketpair()
        _pair = (ours.detach(), theirs.detach())
    return _pair[0]


class StubConnection:
    """Just enough of a psycopg2 connection for a pool: open, idle, autocommit."""

    closed = 0
    status = psycopg2.extensions.STATUS_READY  # not in a two-phase transaction
    autocommit = True
    isolation_level = psycopg2.extensions.ISOLATION_LEVEL_DEFAULT
    readonly = None
    deferrable = None
    encoding = "UTF8"
    info = SimpleNamespace(transaction_status=psycopg2.extensions.TRANSACTION_STATUS_IDLE)
    # DBUtils looks for the driver's exception classes on the connection.
    OperationalError = psycopg2.OperationalError
    InterfaceError = psycopg2.InterfaceError
    InternalError = psycopg2.InternalError

    created = itertools.count()  # next() is atomic in CPython: a lock-free tally

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        next(StubConnection.created)
        self.notices: list[str] = []
        self.notifies: list[Any] = []

    def get_transaction_status(self) -> int:
        return psycopg2.extensions.TRANSACTION_STATUS_IDLE

    def cursor(self) -> StubCursor:
        return StubCursor()

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def set_client_encoding(self, encoding: str) -> None:
        self.encoding = encoding

    def fileno(self) -> int:
        return _quiet_fd()

    def close(self) -> None:
        self.closed = 1


class _StubConnectMixin:
    """psycopg2.pool with stub connections: `_connect` is its only way to connect."""

    _pool: list[Any]
    _used: dict[Any, Any]
    _rused: dict[int, Any]

    def _connect(self, key: Any = None) -> Any:
        conn = StubConnection()
        if key is not None:
            self._used[key] = conn
            self._rused[id(conn)] = key
        else:
            self._pool.append(conn)
        return conn


class StubThreadedPool(_StubConnectMixin, psycopg2.pool.ThreadedConnectionPool):
    pass


class StubSimplePool(_StubConnectMixin, psycopg2.pool.SimpleConnectionPool):
    pass


def _created() -> int:
    """Stub connections created so far (reading the tally moves it on by one)."""
    return next(StubConnection.created)


def _stub_psycopg2_pool(threaded: bool, n: int) -> Any:
    """psycopg2-pool with stub connections: its `_connect` is its only way to connect."""
    import psycopg2_pool

    base = psycopg2_pool.ThreadSafeConnectionPool if threaded else psycopg2_pool.ConnectionPool

    class Stubbed(base):  # type: ignore[misc,valid-type]
        def _connect(self, for_immediate_use: bool = False) -> Any:
            conn = StubConnection()
            if for_immediate_use:
                self.connections_in_use.add(conn)
            else:
                self.return_times[conn] = time.perf_counter()
                self.idle_connections.append(conn)
            return conn

    return Stubbed(minconn=n, maxconn=n)


class LockFloor:
    """The least a lock-based pool can do: a list of connections behind a threading.Lock.

    No bookkeeping, no checks, no waiting: its cost across thread counts is what CPython's
    lock and GIL charge any pool that takes a lock on each checkout and return.
    """

    def __init__(self, n: int) -> None:
        self._lock = threading.Lock()
        self._idle = [StubConnection() for _ in range(n)]

    def getconn(self) -> Any:
        with self._lock:
            return self._idle.pop()

    def putconn(self, conn: Any) -> None:
        with self._lock:
            self._idle.append(conn)

    def closeall(self) -> None:
        self._idle.clear()


def _build(key: str, n: int) -> tuple[Any, Any, Any]:
    """(get, put, close) of contender `key` as a pool (n, n) of stub connections."""
    if key == LOCK_FLOOR:
        floor = LockFloor(n)
        return floor.getconn, floor.putconn, floor.closeall
    if key.startswith("pgpool"):
        import pgpool

        cls = (
            pgpool.ThreadedConnectionPool
            if key == "pgpool-threaded"
            else pgpool.SimpleConnectionPool
        )
        pool = cls(n, n, connector=StubConnection)
        return pool.getconn, pool.putconn, pool.closeall
    if key.startswith("psycopg2-pool"):
        p3 = _stub_psycopg2_pool(key == "psycopg2-pool-ts", n)
        return p3.getconn, p3.putconn, p3.clear
    if key.startswith("psycopg2"):
        ptype = StubThreadedPool if key == "psycopg2-threaded" else StubSimplePool
        p2 = ptype(n, n)
        return p2.getconn, p2.putconn, p2.closeall
    if key == "sqlalchemy":
        from sqlalchemy.pool import QueuePool

        qp = QueuePool(cast(Any, StubConnection), pool_size=n, max_overflow=0)
        conns = [qp.connect() for _ in range(n)]  # open all n, like the others
        for conn in conns:
            conn.close()
        return qp.connect, _close, qp.dispose
    if key == "dbutils":
        from dbutils.pooled_db import PooledDB

        db = PooledDB(StubConnection, mincached=n, maxconnections=n, blocking=True)
        return db.connection, _close, db.close
    raise ValueError(key)


def _close(conn: Any) -> None:
    conn.close()


MAXCONN_KEYS = ("pgpool-threaded", "pgpool-simple", "psycopg2-threaded", "psycopg2-simple")
THREAD_KEYS = ("pgpool-threaded", "psycopg2-threaded")
EXTRA_KEYS = ("psycopg2-pool-ts", "sqlalchemy", "dbutils")  # both axes, when installed
EXTRA_SINGLE = ("psycopg2-pool",)  # the maxconn axis (one thread), when installed
LOCK_FLOOR = "lock-floor"
LOCK_FLOOR_LABEL = "Lock + list (floor)"


def _keys(threaded_only: bool) -> list[str]:
    """The contenders of one axis, in the canonical order, those installed only."""
    wanted: tuple[str, ...] = (
        THREAD_KEYS + EXTRA_KEYS if threaded_only else MAXCONN_KEYS + EXTRA_KEYS + EXTRA_SINGLE
    )
    order = [c.key for c in cs.CONTENDERS]
    keys = sorted(wanted, key=order.index)
    return [k for k in keys if cs.BY_KEY[k].available] + [LOCK_FLOOR]


def _sizes(quick: bool) -> tuple[int, int, int, float]:
    """(repetitions, cycles per maxconn point, thread repetitions, seconds per thread point)."""
    return (1, 1000, 1, 0.05) if quick else (9, 5000, 3, 0.4)


def steps(quick: bool) -> int:
    reps, _, treps, _ = _sizes(quick)
    return reps * len(_keys(False)) * 2 + treps * len(_keys(True))


def _cycle_ns(get: Any, put: Any, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        put(get())
    return (time.perf_counter() - start) / n * 1e9


def _maxconn_point(key: str, n: int, cycles: int, hold: bool) -> tuple[float, int]:
    """(ns per cycle, stub connections created) for a pool (n, n) on one thread."""
    before = _created()
    get, put, close = _build(key, n)
    held = [get() for _ in range(n - 1)] if hold else []
    try:
        _cycle_ns(get, put, max(100, cycles // 10))  # warm-up
        return _cycle_ns(get, put, cycles), _created() - before - 1
    finally:
        for conn in held:
            put(conn)
        close()


def _threads_point(key: str, threads: int, seconds: float) -> tuple[float, int]:
    """(ns of wall time per cycle, stub connections created) for `threads` threads."""
    before = _created()
    get, put, close = _build(key, threads)
    counts = [0] * threads
    deadline = float("inf")
    clock = time.perf_counter

    def worker(i: int) -> None:
        # At least one batch, even if the deadline has passed when this thread first runs:
        # on a loaded machine a thread may get the CPU only after the whole 50 ms, and a
        # point where no thread counted a cycle would divide by zero below.
        done = 0
        while True:
            for _ in range(50):  # check the clock every 50 cycles, not every cycle
                put(get())
            done += 50
            if clock() >= deadline:
                break
        counts[i] = done

    def release() -> None:
        nonlocal deadline
        deadline = clock() + seconds

    try:
        elapsed = run_threads(threads, worker, name="scale", on_release=release)
        created = _created() - before - 1
    finally:
        close()
    return elapsed / sum(counts) * 1e9, created


def run(ctx: Context) -> dict[str, Any]:
    reps, cycles, treps, seconds = _sizes(ctx.quick)
    maxconn: dict[str, dict[str, Any]] = {}
    # Stub connections created beyond the pool's maxconn: per series, per contender, the
    # most at any point.
    excess: dict[str, dict[str, int]] = {"idle": {}, "held": {}, "threads": {}}

    def note(series: str, key: str, created: int, n: int) -> None:
        if created > n:
            excess[series][key] = max(excess[series].get(key, 0), created - n)

    for series, hold in (("idle", False), ("held", True)):
        samples: dict[str, dict[int, list[float]]] = {
            k: {n: [] for n in MAXCONNS} for k in _keys(False)
        }
        for _rep in range(reps):
            for key in _keys(False):
                with no_gc():  # like timeit; collected once per key, not once per point
                    for n in MAXCONNS:
                        ns, created = _maxconn_point(key, n, cycles, hold)
                        samples[key][n].append(ns)
                        note(series, key, created, n)
                ctx.advance(f"scale / maxconn ({series}) / {key}")
        maxconn[series] = _analyse(samples, REF_MAXCONN)
    tsamples: dict[str, dict[int, list[float]]] = {k: {t: [] for t in THREADS} for k in _keys(True)}
    for _rep in range(treps):
        for key in _keys(True):
            for t in THREADS:
                ns, created = _threads_point(key, t, seconds)
                tsamples[key][t].append(ns)
                note("threads", key, created, t)
            ctx.advance(f"scale / threads / {key}")
    return {
        "title": TITLE,
        "settings": {
            "maxconns": list(MAXCONNS),
            "threads": list(THREADS),
            "repetitions": reps,
            "cycles": cycles,
            "thread_repetitions": treps,
            "seconds_per_thread_point": seconds,
        },
        "labels": {**{c.key: c.label for c in cs.CONTENDERS}, LOCK_FLOOR: LOCK_FLOOR_LABEL},
        "maxconn": maxconn,
        "threads": _analyse(tsamples, REF_THREADS),
        "over_maxconn": excess,
    }


def _analyse(samples: dict[str, dict[int, list[float]]], ref: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, points in samples.items():
        summaries = {str(x): summarize(v).to_dict() for x, v in points.items()}
        ref_ns = summaries[str(ref)]["median"]
        largest = str(max(points))
        out[key] = {
            "ns": summaries,
            # The ratio of the two medians the table shows.
            "largest_vs_ref": summaries[largest]["median"] / ref_ns if ref_ns else None,
            # The largest relative spread (half-IQR / median) over the row's points.
            "spread": max(Summary.from_dict(v).spread for v in summaries.values()),
        }
    return out


def _spread_cell(row: dict[str, Any], n: int) -> str:
    if n < 2:
        return ONCE
    pct = row["spread"] * 100
    return f"±{pct:.0f} %" if pct >= 1 else f"±{pct:.1g} %"  # never "±0 %" by rounding


def tables(result: dict[str, Any]) -> list[Table]:
    labels = result["labels"]
    st = result["settings"]
    over = result.get("over_maxconn", {})

    def over_note(series: str) -> str:
        found = over.get(series, {})
        if not found:
            return "no contender opened more (stub) connections than the pool's maxconn"
        return "opened more (stub) connections than maxconn, most at one point: " + ", ".join(
            f"{labels[k]} +{n}" for k, n in found.items()
        )

    out = []
    for series, what in (("idle", "all idle"), ("held", "all but one checked out")):
        data = result["maxconn"][series]
        cols = ["maxconn:", *[str(n) for n in st["maxconns"]], "1000 / 4", "spread"]
        rows = [
            [labels[key]]
            + [fmt(row["ns"][str(n)]["median"] / 1e3, 2) for n in st["maxconns"]]
            + [fmt(row["largest_vs_ref"], 2, "x"), _spread_cell(row, st["repetitions"])]
            for key, row in data.items()
        ]
        notes = [
            f"us per checkout + return, one thread, stub connections, {what}: median of "
            f"{st['repetitions']} repetitions x {st['cycles']:,} cycles at each maxconn",
            "1000 / 4: the ratio of those two medians; spread: the largest half interquartile "
            "range of the row, relative to its median",
            over_note(series),
        ]
        out.append(Table(f"scale: pool size, {what} (us)", cols, rows, notes))
    data = result["threads"]
    cols = ["threads:", *[str(t) for t in st["threads"]], "256 / 1", "spread"]
    rows = [
        [labels[key]]
        + [fmt(row["ns"][str(t)]["median"] / 1e3, 2) for t in st["threads"]]
        + [fmt(row["largest_vs_ref"], 2, "x"), _spread_cell(row, st["thread_repetitions"])]
        for key, row in data.items()
    ]
    notes = [
        "us of wall time per checkout + return, all threads together (pool (T, T): nobody "
        f"waits): median of {st['thread_repetitions']} repetitions x "
        f"{st['seconds_per_thread_point']:g} s at each thread count",
        "256 / 1: the ratio of those two medians (the goal compares it with SQLAlchemy's); "
        "spread as above",
        over_note("threads"),
    ]
    out.append(Table("scale: threads (us)", cols, rows, notes))
    return out

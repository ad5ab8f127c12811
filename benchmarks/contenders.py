"""The pools being compared, all driven through one small interface.

Every contender is configured the same way: the same server and DSN, autocommit on, the
same minimum and maximum size, and every other setting left at its default unless a
scenario says otherwise. Each one is wrapped in a `Handle` that exposes

- ``get()`` / ``put(conn)``: the cheapest way a user's code borrows and returns a
  connection with that library (bound methods wherever possible, so the wrapper adds
  nothing to what is measured);
- ``opened``: a `Counter` of the connections opened so far and of the most that were
  open at once (the contender's *sessions* on the server), counted *the same way for
  everyone*: psycopg2-based contenders get a ``connection_factory`` subclass that counts
  each connection when it opens and when it closes (and turns autocommit on),
  psycopg_pool gets a ``connection_class`` subclass that does the same. A contender
  whose sessions exceed the configured maximum is marked in every table and never
  counts as the "best other pool" a goal is judged against;
- ``state()``: idle / in use / waiting right now, for the pool-state timelines.

How each library's knobs map to "min / max":

- psycopg2.pool: ``(minconn, maxconn)``. It never waits: when all ``maxconn`` are out it
  raises ``PoolError("connection pool exhausted")``. Any threaded program must therefore
  wrap ``getconn`` in a retry loop; the one used here is what a user would write: sleep
  1 ms and try again, up to 30 s (`RETRY_SLEEP`).
- psycopg_pool.ConnectionPool: ``min_size``, ``max_size``, ``kwargs={"autocommit": True}``.
  It runs on the psycopg 3 driver, so its floor is a raw psycopg 3 connection, reported
  next to it.
- SQLAlchemy QueuePool over psycopg2: ``pool_size=min``, ``max_overflow=max - min`` (so at
  most ``max`` connections, and ``min`` of them kept). It opens lazily, so it is primed
  with ``min`` connections like the others.
- DBUtils PooledDB over psycopg2: ``mincached=min``, ``maxconnections=max``, ``blocking=True``.
- psycopg2-pool (PyPI) over psycopg2: ``minconn=min``, ``maxconn=max``. Like psycopg2.pool
  it raises ``PoolError("connection pool exhausted")`` instead of waiting, so its
  thread-safe pool runs in the same retry loop. It does not enforce ``maxconn``: a
  connection taken from its idle deque is never counted as in use, so under contention
  it opens more than ``maxconn`` (the sessions column shows how many).
"""

from __future__ import annotations

import importlib.util
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import repeat
from operator import methodcaller
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool

RETRY_SLEEP = 0.001  # psycopg2.pool retry loop: sleep this long after "pool exhausted"
RETRY_DEADLINE = 30.0  # ... and give up after this long, like the other pools' timeout


class Counter:
    """Connections opened by one contender, and how many were open at once (its sessions).

    Every connection a contender opens registers here (`opened`) and hands back a
    `release` to call when it closes. `live` is the number open right now; `peak` the most
    that were ever open together: each one is a session (a backend process) on the
    server. The peak can only be reached the moment a connection opens, so updating it
    there makes it exact, where sampling ``pg_stat_activity`` could miss a short burst.
    A connection counts as closed when its ``close()`` is called or, if nobody closes it,
    when it is garbage-collected (its backend goes away then too).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.value = 0  # connections opened so far
        self.live = 0
        self.peak = 0

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.value += n
            self.live += n
            self.peak = max(self.peak, self.live)

    def opened(self) -> Callable[[], None]:
        """Count one connection opened; return the callable that counts it closed (once)."""
        self.add()
        done: list[bool] = []

        def release() -> None:
            with self._lock:
                if not done:
                    done.append(True)
                    self.live -= 1

        return release


def _track(conn: Any, counter: Counter) -> Callable[[], None]:
    """Count `conn` as open until it is closed or garbage-collected."""
    release = counter.opened()
    weakref.finalize(conn, release)
    return release


def counting_factory(counter: Counter) -> type[psycopg2.extensions.connection]:
    """A psycopg2 ``connection_factory`` that counts each connection (open and closed) and
    sets autocommit."""

    class CountingConnection(psycopg2.extensions.connection):
        def __init__(self, dsn: str, *args: Any, **kwargs: Any) -> None:
            super().__init__(dsn, *args, **kwargs)
            self.autocommit = True  # a local flag on a fresh connection: no round trip
            self._bench_release = _track(self, counter)

        def close(self) -> None:
            super().close()
            self._bench_release()

    return CountingConnection


def counting_psycopg3_class(counter: Counter) -> type[Any]:
    """A psycopg 3 ``connection_class`` that counts each connection (open and closed)."""
    import psycopg

    class CountingConnection(psycopg.Connection[Any]):
        _bench_release: Callable[[], None] | None = None

        @classmethod
        def connect(cls, *args: Any, **kwargs: Any) -> Any:
            conn = super().connect(*args, **kwargs)
            conn._bench_release = _track(conn, counter)
            return conn

        def close(self) -> None:
            super().close()
            if self._bench_release is not None:
                self._bench_release()

    return CountingConnection


@dataclass(frozen=True)
class PoolConfig:
    """What a scenario asks of every contender."""

    dsn: str
    minconn: int
    maxconn: int
    # Extra keyword arguments for pgpool (e.g. max_idle, maintenance_interval) ...
    pgpool_options: dict[str, Any] = field(default_factory=dict)
    # ... and for psycopg_pool when a scenario sets the same knob on it (e.g. max_idle),
    psycopg_pool_options: dict[str, Any] = field(default_factory=dict)
    # ... and for psycopg2-pool (its knob for that is idle_timeout).
    psycopg2_pool_options: dict[str, Any] = field(default_factory=dict)
    # Whether psycopg2.pool gets its retry loop (threads > 1); one thread never exhausts it.
    retry: bool = True


@dataclass
class State:
    """A pool's gauges at one instant, for the timelines."""

    idle: int
    in_use: int
    waiting: int
    connecting: int = 0  # connects in progress, counted in the pool's size


@dataclass
class Handle:
    """A live contender: a pool (or a reference) ready to serve connections."""

    get: Callable[[], Any]
    put: Callable[[Any], Any]
    close: Callable[[], Any]
    opened: Counter
    state: Callable[[], State] | None = None


@dataclass(frozen=True)
class Contender:
    """One library (or reference point) in the comparison."""

    key: str
    label: str
    threaded: bool  # safe to share between threads
    reference: bool  # not a pool: a floor or a ceiling to compare pools against
    driver: str  # "psycopg2" or "psycopg 3"
    build: Callable[[PoolConfig], Handle]
    requires: str = ""  # module that must be importable
    note: str = ""

    @property
    def available(self) -> bool:
        return not self.requires or importlib.util.find_spec(self.requires) is not None


# -- pgpool ---------------------------------------------------------------------------


def _build_pgpool(threaded: bool) -> Callable[[PoolConfig], Handle]:
    def build(cfg: PoolConfig) -> Handle:
        import pgpool

        counter = Counter()
        cls = pgpool.ThreadedConnectionPool if threaded else pgpool.SimpleConnectionPool
        pool = cls(
            cfg.minconn,
            cfg.maxconn,
            cfg.dsn,
            connection_factory=counting_factory(counter),
            name="bench",
            **cfg.pgpool_options,
        )

        def state() -> State:
            s = pool.stats()
            return State(s.idle, s.in_use, s.waiting, s.connecting)

        return Handle(pool.getconn, pool.putconn, pool.closeall, counter, state)

    return build


# -- psycopg2.pool --------------------------------------------------------------------


def retrying(
    getconn: Callable[[], Any],
    error: type[Exception],
    closed: Callable[[], bool],
    inside: list[None],
) -> Callable[[], Any]:
    """The retry loop a pool that raises when exhausted forces on its users.

    Try once; on `error` sleep `RETRY_SLEEP` and try again, up to `RETRY_DEADLINE`
    (unless the pool was closed). `inside` gets one entry per thread in the loop: a free,
    lock-less "waiting" gauge (list.append and list.pop are atomic).
    """

    def get() -> Any:
        inside.append(None)
        try:
            try:
                return getconn()
            except error:
                if closed():
                    raise
            deadline = time.monotonic() + RETRY_DEADLINE
            while True:
                time.sleep(RETRY_SLEEP)
                try:
                    return getconn()
                except error:
                    if closed() or time.monotonic() > deadline:
                        raise
        finally:
            inside.pop()

    return get


def _build_psycopg2(threaded: bool) -> Callable[[PoolConfig], Handle]:
    def build(cfg: PoolConfig) -> Handle:
        counter = Counter()
        cls = (
            psycopg2.pool.ThreadedConnectionPool if threaded else psycopg2.pool.SimpleConnectionPool
        )
        pool: Any = cls(
            cfg.minconn, cfg.maxconn, cfg.dsn, connection_factory=counting_factory(counter)
        )
        inside: list[None] = []  # threads inside getconn (on the lock or retrying)

        def state() -> State:
            return State(idle=len(pool._pool), in_use=len(pool._used), waiting=len(inside))

        if not (threaded and cfg.retry):
            return Handle(pool.getconn, pool.putconn, pool.closeall, counter, state)
        get = retrying(pool.getconn, psycopg2.pool.PoolError, lambda: bool(pool.closed), inside)
        return Handle(get, pool.putconn, pool.closeall, counter, state)

    return build


# -- psycopg2-pool (PyPI) -------------------------------------------------------------


def _build_psycopg2_pool(threaded: bool) -> Callable[[PoolConfig], Handle]:
    """psycopg2-pool's ThreadSafeConnectionPool (an RLock around each call) or its
    unlocked ConnectionPool. Keyword arguments only; `idle_timeout` stays at its default
    (600 s) unless a scenario sets it. It has no close-everything call: `clear()` closes
    the idle connections, and the in-use ones are closed by hand."""

    def build(cfg: PoolConfig) -> Handle:
        import psycopg2_pool

        counter = Counter()
        cls = psycopg2_pool.ThreadSafeConnectionPool if threaded else psycopg2_pool.ConnectionPool
        pool: Any = cls(
            minconn=cfg.minconn,
            maxconn=cfg.maxconn,
            dsn=cfg.dsn,
            connection_factory=counting_factory(counter),
            **cfg.psycopg2_pool_options,
        )
        inside: list[None] = []
        closed: list[bool] = []

        def state() -> State:
            idle = len(pool.idle_connections)
            # In use: what it counts (fresh connections) is not all that is out, see the
            # module's note; the counter's live figure is exact.
            return State(idle=idle, in_use=max(0, counter.live - idle), waiting=len(inside))

        def close() -> None:
            closed.append(True)
            pool.clear()
            for conn in list(pool.connections_in_use):
                conn.close()

        get = pool.getconn
        if threaded and cfg.retry:
            get = retrying(pool.getconn, psycopg2_pool.PoolError, lambda: bool(closed), inside)
        return Handle(get, pool.putconn, close, counter, state)

    return build


# -- psycopg_pool (psycopg 3) ---------------------------------------------------------


def _build_psycopg_pool(cfg: PoolConfig) -> Handle:
    import psycopg_pool

    counter = Counter()
    pool = psycopg_pool.ConnectionPool(
        cfg.dsn,
        min_size=cfg.minconn,
        max_size=cfg.maxconn,
        kwargs={"autocommit": True},
        connection_class=counting_psycopg3_class(counter),
        open=True,
        **cfg.psycopg_pool_options,
    )
    pool.wait(timeout=60.0)  # min_size connections are opened in the background

    def state() -> State:
        s = pool.get_stats()
        available = s.get("pool_available", 0)
        return State(
            idle=available,
            in_use=s.get("pool_size", 0) - available,
            waiting=s.get("requests_waiting", 0),
        )

    return Handle(pool.getconn, pool.putconn, pool.close, counter, state)


# -- SQLAlchemy QueuePool -------------------------------------------------------------


def _build_sqlalchemy(cfg: PoolConfig) -> Handle:
    from sqlalchemy.pool import QueuePool

    counter = Counter()
    factory = counting_factory(counter)
    dsn = cfg.dsn

    def creator() -> Any:
        return psycopg2.connect(dsn, connection_factory=factory)

    pool = QueuePool(creator, pool_size=cfg.minconn, max_overflow=cfg.maxconn - cfg.minconn)
    _prime(pool.connect, methodcaller("close"), cfg.minconn)

    def state() -> State:
        return State(idle=pool.checkedin(), in_use=pool.checkedout(), waiting=0)

    return Handle(pool.connect, methodcaller("close"), pool.dispose, counter, state)


# -- DBUtils PooledDB -----------------------------------------------------------------


def _build_dbutils(cfg: PoolConfig) -> Handle:
    from dbutils.pooled_db import PooledDB

    counter = Counter()
    pool = PooledDB(
        psycopg2,
        mincached=cfg.minconn,
        maxconnections=cfg.maxconn,
        blocking=True,
        dsn=cfg.dsn,
        connection_factory=counting_factory(counter),
    )

    def state() -> State:
        return State(idle=len(pool._idle_cache), in_use=pool._connections, waiting=0)

    return Handle(pool.connection, methodcaller("close"), pool.close, counter, state)


def _prime(get: Callable[[], Any], put: Callable[[Any], Any], n: int) -> None:
    """Open `n` connections up front, for pools that only connect on demand."""
    conns = [get() for _ in range(n)]
    for conn in conns:
        put(conn)


# -- references -----------------------------------------------------------------------


def _noop(conn: Any) -> None:
    """Returning a connection that was never borrowed."""


def _build_raw_psycopg2(cfg: PoolConfig) -> Handle:
    counter = Counter()
    conn = psycopg2.connect(cfg.dsn, connection_factory=counting_factory(counter))
    return Handle(repeat(conn).__next__, _noop, conn.close, counter)


def _build_raw_psycopg3(cfg: PoolConfig) -> Handle:
    counter = Counter()
    conn = counting_psycopg3_class(counter).connect(cfg.dsn, autocommit=True)
    return Handle(repeat(conn).__next__, _noop, conn.close, counter)


class _LockFloor:
    """The least a lock-based pool does: one connection in a list behind a threading.Lock.

    Two ways to hold the lock, the two a pool's checkout and return are written with:
    ``with lock:`` (pgpool, psycopg_pool, SQLAlchemy's queue) or ``lock.acquire()`` then
    ``try: ... finally: lock.release()`` (psycopg2.pool). Measured side by side they show
    what the idiom alone costs, so that each pool's own bookkeeping can be compared with
    its own idiom's floor (the cycle scenario's goal).

    Why pgpool keeps ``with``: a signal handler that raises (Ctrl-C, a task queue's soft
    time limit) runs between two bytecodes. After ``acquire()`` returns and before the
    ``try`` begins, it leaves the lock held for good, and every later call hangs; the
    ``with`` statement has no such gap. `benchmarks/lock_idiom.py` measures both.
    """

    def __init__(self, conn: Any) -> None:
        self._lock = threading.Lock()
        self._idle = [conn]

    def get_with(self) -> Any:
        with self._lock:
            return self._idle.pop()

    def put_with(self, conn: Any) -> None:
        with self._lock:
            self._idle.append(conn)

    def get_try(self) -> Any:
        self._lock.acquire()
        try:
            return self._idle.pop()
        finally:
            self._lock.release()

    def put_try(self, conn: Any) -> None:
        self._lock.acquire()
        try:
            self._idle.append(conn)
        finally:
            self._lock.release()


def _build_lock_floor(idiom: str) -> Callable[[PoolConfig], Handle]:
    def build(cfg: PoolConfig) -> Handle:
        counter = Counter()
        conn = psycopg2.connect(cfg.dsn, connection_factory=counting_factory(counter))
        floor = _LockFloor(conn)
        if idiom == "with":
            return Handle(floor.get_with, floor.put_with, conn.close, counter)
        return Handle(floor.get_try, floor.put_try, conn.close, counter)

    return build


def _build_connect_per_request(cfg: PoolConfig) -> Handle:
    counter = Counter()
    factory = counting_factory(counter)
    dsn = cfg.dsn

    def get() -> Any:
        return psycopg2.connect(dsn, connection_factory=factory)

    return Handle(get, methodcaller("close"), lambda: None, counter)


CONTENDERS: list[Contender] = [
    Contender(
        "pgpool-threaded",
        "pgpool Threaded",
        True,
        False,
        "psycopg2",
        _build_pgpool(True),
        note="pgpool.ThreadedConnectionPool: waits (first come, first served) when exhausted",
    ),
    Contender(
        "pgpool-simple",
        "pgpool Simple",
        False,
        False,
        "psycopg2",
        _build_pgpool(False),
        note="pgpool.SimpleConnectionPool: for one thread, no background thread",
    ),
    Contender(
        "psycopg2-threaded",
        "psycopg2 Threaded",
        True,
        False,
        "psycopg2",
        _build_psycopg2(True),
        note="psycopg2.pool.ThreadedConnectionPool; raises when exhausted: wrapped in a retry "
        "loop (sleep 1 ms, retry)",
    ),
    Contender(
        "psycopg2-simple",
        "psycopg2 Simple",
        False,
        False,
        "psycopg2",
        _build_psycopg2(False),
        note="psycopg2.pool.SimpleConnectionPool: no lock, one thread only",
    ),
    Contender(
        "psycopg2-pool-ts",
        "psycopg2-pool TS",
        True,
        False,
        "psycopg2",
        _build_psycopg2_pool(True),
        requires="psycopg2_pool",
        note="PyPI psycopg2-pool's ThreadSafeConnectionPool; raises when exhausted: wrapped in "
        "the same retry loop; does not enforce maxconn (see the sessions column)",
    ),
    Contender(
        "psycopg2-pool",
        "psycopg2-pool",
        False,
        False,
        "psycopg2",
        _build_psycopg2_pool(False),
        requires="psycopg2_pool",
        note="PyPI psycopg2-pool's ConnectionPool: no lock, one thread only",
    ),
    Contender(
        "psycopg_pool",
        "psycopg_pool",
        True,
        False,
        "psycopg 3",
        _build_psycopg_pool,
        requires="psycopg_pool",
        note="psycopg_pool.ConnectionPool on the psycopg 3 driver: compare with the raw "
        "psycopg 3 floor",
    ),
    Contender(
        "sqlalchemy",
        "SQLAlchemy",
        True,
        False,
        "psycopg2",
        _build_sqlalchemy,
        requires="sqlalchemy",
        note="QueuePool: pool_size=min, max_overflow=max-min",
    ),
    Contender(
        "dbutils",
        "DBUtils",
        True,
        False,
        "psycopg2",
        _build_dbutils,
        requires="dbutils",
        note="PooledDB: mincached=min, maxconnections=max, blocking",
    ),
    Contender(
        "raw-psycopg2",
        "raw psycopg2",
        False,
        True,
        "psycopg2",
        _build_raw_psycopg2,
        note="the floor: one connection reused, no pool at all",
    ),
    Contender(
        "raw-psycopg3",
        "raw psycopg 3",
        False,
        True,
        "psycopg 3",
        _build_raw_psycopg3,
        requires="psycopg",
        note="psycopg_pool's floor: one psycopg 3 connection reused",
    ),
    Contender(
        "lock-with",
        "Lock+list, with",
        False,
        True,
        "psycopg2",
        _build_lock_floor("with"),
        note="pgpool's lock floor: one connection in a list behind `with lock:`",
    ),
    Contender(
        "lock-try",
        "Lock+list, try",
        False,
        True,
        "psycopg2",
        _build_lock_floor("try"),
        note="psycopg2.pool's lock floor: the same list behind acquire(), try, finally release()",
    ),
    Contender(
        "connect-per-request",
        "connect per request",
        True,
        True,
        "psycopg2",
        _build_connect_per_request,
        note="psycopg2.connect() and close() around every request: what pooling saves",
    ),
]

BY_KEY = {c.key: c for c in CONTENDERS}
BASELINE = "psycopg2-threaded"  # every ratio in the report is relative to this one


def select(
    *, threaded: bool | None = None, reference: bool | None = None, keys: list[str] | None = None
) -> list[Contender]:
    """The available contenders matching the filters, in the canonical order."""
    chosen = []
    for c in CONTENDERS:
        if keys is not None and c.key not in keys:
            continue
        if threaded is not None and c.threaded != threaded:
            continue
        if reference is not None and c.reference != reference:
            continue
        if c.available:
            chosen.append(c)
    return chosen


def run_query(conn: Any, sql: str) -> None:
    """One statement, the way application code does it (DB-API: cursor, execute, fetch)."""
    cur = conn.cursor()
    cur.execute(sql)
    cur.fetchone()
    cur.close()

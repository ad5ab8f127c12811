"""Helpers shared by the API, blocking, lifecycle, misuse, compat and helpers tests.

Nothing here is a fixture: each test module declares the two-line fixtures it needs
(`pools`, `app`) on top of these, so that a module reads on its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.pool

import pgpool
from testbed.embedded import run_sql

T = TypeVar("T")

DEADLINE = 10.0  # seconds: a generous bound that only ends a test that would otherwise hang


class FakeClock:
    """A monotonic clock the test moves by hand: `pool = Pool(..., clock=clock)`."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def unique_app_name(prefix: str = "pgpool-test") -> str:
    """An application_name no other test uses, to count or kill exactly our backends."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def backend_count(dsn: str, application_name: str) -> int:
    """How many server backends currently carry `application_name`."""
    rows = run_sql(
        dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
        (application_name,),
    )
    assert rows is not None
    count: int = rows[0][0]
    return count


def wait_until(
    predicate: Callable[[], bool], what: str = "condition", timeout: float = DEADLINE
) -> None:
    """Poll `predicate` until it is true; fail the test if `timeout` passes first.

    The timeout is a deadline that ends a broken test, never a performance assertion.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for: {what}")
        time.sleep(0.002)


def wait_backends(dsn: str, application_name: str, expected: int) -> None:
    """Wait until exactly `expected` backends carry `application_name` (closes are async)."""
    wait_until(
        lambda: backend_count(dsn, application_name) == expected,
        f"{expected} backends named {application_name}",
    )


def terminate_pid(dsn: str, pid: int) -> None:
    """Kill one backend and wait (up to 5 s) until it has exited."""
    rows = run_sql(dsn, "SELECT pg_terminate_backend(%s, 5000)", (pid,))
    assert rows == [(True,)], f"could not terminate backend {pid}"


def select_one(conn: Any) -> Any:
    """Run `SELECT 1` on a connection and return the value (proves it works)."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")
        row = cursor.fetchone()
    assert row is not None
    return row[0]


class Task(Generic[T]):
    """`fn(*args)` running in a daemon thread; `result()` joins it with a deadline.

    Exceptions are captured and re-raised by `result()`, so no thread dies with an
    unhandled exception (which pytest would turn into an error under filterwarnings=error).
    """

    def __init__(self, fn: Callable[..., T], *args: Any, name: str | None = None) -> None:
        self._fn = fn
        self._args = args
        self._value: T | None = None
        self._error: BaseException | None = None
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self.started.set()
        try:
            self._value = self._fn(*self._args)
        except BaseException as error:
            self._error = error

    @property
    def done(self) -> bool:
        return not self._thread.is_alive()

    def join(self, timeout: float = DEADLINE) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"thread {self._thread.name} still running after {timeout} s")

    def result(self, timeout: float = DEADLINE) -> T:
        self.join(timeout)
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

    def error(self, timeout: float = DEADLINE) -> BaseException | None:
        """Join, and return the exception the function raised (None if it returned)."""
        self.join(timeout)
        return self._error


AnyPool = pgpool.AbstractConnectionPool | psycopg2.pool.AbstractConnectionPool


class Pools:
    """Makes pools for one test and closes every one of them (and stray connections) after.

    pgpool pools default to `maintenance_interval=None` here: no background thread, so a
    test that wants maintenance calls `pool.maintain()` itself. Threaded pools default to
    `timeout=DEADLINE`, not 30 s: a regression that leaves a caller waiting (the connector
    never told to connect, say) fails the test that waits, by name, within seconds (on a
    FakeClock, `timeout=0`: see `threaded`).
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._pools: list[AnyPool] = []
        self._conns: list[Any] = []

    def threaded(
        self, minconn: int = 0, maxconn: int = 2, *args: Any, **kwargs: Any
    ) -> pgpool.ThreadedConnectionPool:
        kwargs.setdefault("maintenance_interval", None)
        # On a test's own clock (a FakeClock) a wait would never end, since only the test
        # moves it: there the default is timeout 0, so callers connect inline, as
        # psycopg2.pool's do, and never wait for the connector.
        kwargs.setdefault("timeout", 0 if "clock" in kwargs else DEADLINE)
        pool = pgpool.ThreadedConnectionPool(minconn, maxconn, *(args or (self.dsn,)), **kwargs)
        self._pools.append(pool)
        return pool

    def simple(
        self, minconn: int = 0, maxconn: int = 2, *args: Any, **kwargs: Any
    ) -> pgpool.SimpleConnectionPool:
        kwargs.setdefault("maintenance_interval", None)
        pool = pgpool.SimpleConnectionPool(minconn, maxconn, *(args or (self.dsn,)), **kwargs)
        self._pools.append(pool)
        return pool

    def add(self, pool: AnyPool) -> AnyPool:
        """Adopt a pool made elsewhere (e.g. a psycopg2.pool one) so it gets closed."""
        self._pools.append(pool)
        return pool

    def connect(self, **kwargs: Any) -> psycopg2.extensions.connection:
        """A plain psycopg2 connection, not from any pool, closed after the test."""
        conn: psycopg2.extensions.connection = psycopg2.connect(self.dsn, **kwargs)
        self._conns.append(conn)
        return conn

    def close(self) -> None:
        """Close every pool and connection, even if closing one of them raises (the first
        error is raised at the end): a teardown must not leave sessions behind."""
        errors: list[BaseException] = []
        for closable in [*self._pools, *self._conns]:
            try:
                if isinstance(closable, AnyPool):
                    if not closable.closed:
                        closable.closeall()
                else:
                    closable.close()
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]

    def __enter__(self) -> Pools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def pools_fixture(dsn: str) -> Iterator[Pools]:
    """The body of each module's `pools` fixture."""
    with Pools(dsn) as pools:
        yield pools


def assert_serves_maxconn(pool: pgpool.AbstractConnectionPool) -> None:
    """The pool lost nothing: it hands out `maxconn` distinct working connections at once,
    refuses one more, and takes them all back."""
    conns = [pool.getconn(timeout=0) for _ in range(pool.maxconn)]
    try:
        assert len({id(c) for c in conns}) == pool.maxconn
        for conn in conns:
            assert select_one(conn) == 1
        stats = pool.stats()
        assert (stats.in_use, stats.connecting, stats.waiting) == (pool.maxconn, 0, 0)
        try:
            extra = pool.getconn(timeout=0)
        except pgpool.PoolTimeout:
            pass
        else:
            conns.append(extra)
            raise AssertionError("the pool handed out more than maxconn connections")
    finally:
        for conn in conns:
            pool.putconn(conn)
    stats = pool.stats()
    assert (stats.in_use, stats.connecting, stats.waiting) == (0, 0, 0)
    assert stats.idle == pool.maxconn


def make_table(dsn: str, columns: str = "id int PRIMARY KEY, name text") -> str:
    """Create a fresh table on the shared server and return its name."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    run_sql(dsn, f"CREATE TABLE {name} ({columns})")
    return name


def drop_table(dsn: str, name: str) -> None:
    """Drop a test's table; close the pools that used it first (`table_fixture` does).

    A connection still in a transaction that touched the table holds a lock the DROP must
    wait for: a failing test can leave one behind (a pool whose return no longer rolls
    back, say). run_sql's lock_timeout ends that wait within seconds; the holders are then
    terminated, so the table still goes and later tests are unaffected, and the teardown
    fails with a message naming them, instead of hanging the suite.
    """
    try:
        run_sql(dsn, f"DROP TABLE IF EXISTS {name}")
    except psycopg2.errors.LockNotAvailable:
        holders = run_sql(
            dsn,
            "SELECT DISTINCT a.pid, a.application_name, a.state, left(a.query, 60)"
            " FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.relation = to_regclass(%s) AND a.pid <> pg_backend_pid()",
            (name,),
        )
        for pid, *_ in holders or []:
            run_sql(dsn, "SELECT pg_terminate_backend(%s, 5000)", (pid,))
        run_sql(dsn, f"DROP TABLE IF EXISTS {name}")
        raise AssertionError(
            f"dropping table {name} had to wait for sessions still holding a lock on it"
            f" (pid, application_name, state, query): {holders}. They were terminated."
            " Was a connection returned to a pool in a transaction?"
        ) from None


def table_fixture(
    dsn: str, pools: Pools, columns: str = "id int PRIMARY KEY, name text"
) -> Iterator[str]:
    """The body of a `table` fixture: a fresh table, dropped after the test's pools are
    closed, since a pooled connection left in a transaction would hold a lock on it."""
    name = make_table(dsn, columns)
    try:
        yield name
    finally:
        try:
            pools.close()
        finally:
            drop_table(dsn, name)


def table_rows(dsn: str, name: str) -> list[tuple[Any, ...]]:
    """The table's rows as another session sees them (committed data only)."""
    rows = run_sql(dsn, f"SELECT * FROM {name} ORDER BY 1")
    assert rows is not None
    return rows

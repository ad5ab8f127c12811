"""Differential tests: the same calls on psycopg2.pool and on pgpool give the same outcomes
wherever pgpool claims compatibility, and code written for psycopg2.pool runs unchanged
after switching the import. Where pgpool deliberately differs (psycopg2.pool's bugs), both
behaviours are asserted side by side.

A scenario is a function of a pool that returns a trace: connections are named by order
of first appearance (c0, c1, ...), exceptions by kind, so two pools' traces compare
with `==`.
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool
import pytest
from support import Pools, Task, pools_fixture, select_one, terminate_pid, wait_until

import pgpool

PoolFactory = Callable[[int, int], Any]
Scenario = Callable[[Any, "Trace"], None]


@pytest.fixture
def pools(dsn: str) -> Iterator[Pools]:
    yield from pools_fixture(dsn)


class Trace:
    """Records outcomes in a pool-independent form."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self._names: dict[int, str] = {}
        self._keep: list[Any] = []  # keep connections alive so ids are not reused

    def name(self, conn: Any) -> str:
        if id(conn) not in self._names:
            self._names[id(conn)] = f"c{len(self._names)}"
            self._keep.append(conn)
        return self._names[id(conn)]

    def call(self, label: str, fn: Callable[[], Any]) -> Any:
        try:
            result = fn()
        except psycopg2.pool.PoolError as error:
            self.events.append((label, "PoolError"))
            return error
        except Exception as error:
            self.events.append((label, type(error).__name__))
            return error
        if isinstance(result, psycopg2.extensions.connection):
            self.events.append((label, self.name(result)))
        else:
            self.events.append((label, result))
        return result

    def note(self, label: str, value: object) -> None:
        self.events.append((label, value))


# -- the factories under comparison -------------------------------------------------------------


def _factories(pools: Pools, threaded: bool) -> tuple[PoolFactory, PoolFactory]:
    dsn = pools.dsn
    if threaded:

        def theirs(minconn: int, maxconn: int) -> Any:
            return pools.add(psycopg2.pool.ThreadedConnectionPool(minconn, maxconn, dsn))

        def ours(minconn: int, maxconn: int) -> Any:
            # psycopg2.pool never waits: timeout=0 is pgpool's equivalent.
            return pools.threaded(minconn, maxconn, dsn, timeout=0)

    else:

        def theirs(minconn: int, maxconn: int) -> Any:
            return pools.add(psycopg2.pool.SimpleConnectionPool(minconn, maxconn, dsn))

        def ours(minconn: int, maxconn: int) -> Any:
            return pools.simple(minconn, maxconn, dsn)  # Simple defaults to timeout 0

    return theirs, ours


def _compare(pools: Pools, scenario: Scenario, minconn: int, maxconn: int) -> None:
    for threaded in (True, False):
        theirs, ours = _factories(pools, threaded)
        expected, actual = Trace(), Trace()
        scenario(theirs(minconn, maxconn), expected)
        scenario(ours(minconn, maxconn), actual)
        assert actual.events == expected.events, f"threaded={threaded}"


# -- scenarios: same outcome on both --------------------------------------------------------------
# minconn == maxconn in most: psycopg2.pool then keeps every returned connection, like pgpool.


def _keys(pool: Any, t: Trace) -> None:
    a = t.call("get a", lambda: pool.getconn("a"))
    t.call("get a again", lambda: pool.getconn("a"))
    b = t.call("get b", lambda: pool.getconn("b"))
    t.call("get c (exhausted)", lambda: pool.getconn("c"))
    t.call("get a while exhausted", lambda: pool.getconn("a"))
    t.call("get unkeyed (exhausted)", lambda: pool.getconn())
    t.call("put b by key", lambda: pool.putconn(b, key="b"))
    t.call("get c", lambda: pool.getconn("c"))
    t.call("put a without key", lambda: pool.putconn(a))
    t.call("get d", lambda: pool.getconn("d"))
    t.note("attributes", (pool.minconn, pool.maxconn, pool.closed))


def _unkeyed(pool: Any, t: Trace) -> None:
    conns = [t.call(f"get {n}", pool.getconn) for n in range(3)]
    t.call("get (exhausted)", pool.getconn)
    for n, conn in enumerate(conns):
        t.call(f"put {n}", functools.partial(pool.putconn, conn))
    for n in range(3):
        t.call(f"get again {n}", pool.getconn)  # LIFO on both


def _key_zero(pool: Any, t: Trace) -> None:
    # psycopg2 #848 (key 0 taken for "no key" in putconn) is fixed in psycopg2 2.9.
    zero = t.call("get 0", lambda: pool.getconn(0))
    t.call("get 0 again", lambda: pool.getconn(0))
    t.call("get unkeyed", pool.getconn)
    t.call("put 0 without key", lambda: pool.putconn(zero))
    t.call("get 0 after put", lambda: pool.getconn(0))


def _put_close(pool: Any, t: Trace) -> None:
    a = t.call("get a", lambda: pool.getconn("a"))
    t.call("put a, close", lambda: pool.putconn(a, key="a", close=True))
    t.note("a closed", bool(a.closed))
    b = t.call("get b", lambda: pool.getconn("b"))  # a new connection
    t.call("put b, close", lambda: pool.putconn(b, close=True))
    t.note("b closed", bool(b.closed))
    t.call("get", pool.getconn)


def _closeall(pool: Any, t: Trace) -> None:
    held = t.call("get held", lambda: pool.getconn("held"))
    idle = t.call("get idle", pool.getconn)
    t.call("put idle", lambda: pool.putconn(idle))
    t.call("closeall", pool.closeall)
    t.note("closed", pool.closed)
    t.note("held closed", bool(held.closed))  # in-use connections are closed too
    t.note("idle closed", bool(idle.closed))
    t.call("get after close", pool.getconn)
    t.call("get keyed after close", lambda: pool.getconn("held"))
    t.call("put after close", lambda: pool.putconn(held))
    t.call("closeall twice", pool.closeall)


def _returned_in_transaction(pool: Any, t: Trace) -> None:
    conn = t.call("get", pool.getconn)
    select_one(conn)
    t.note("status before put", conn.get_transaction_status())
    t.call("put", lambda: pool.putconn(conn))
    again = t.call("get again", pool.getconn)
    t.note("status after", again.get_transaction_status())
    t.call("put again", lambda: pool.putconn(again))


def _returned_closed(pool: Any, t: Trace) -> None:
    conn = t.call("get", pool.getconn)
    conn.close()
    t.call("put closed", lambda: pool.putconn(conn))
    t.call("put closed twice", lambda: pool.putconn(conn))
    fresh = t.call("get", pool.getconn)
    t.note("fresh works", select_one(fresh))


def _strangers(pool: Any, t: Trace) -> None:
    conn = t.call("get", pool.getconn)
    t.call("put", lambda: pool.putconn(conn))
    t.call("put twice", lambda: pool.putconn(conn))
    t.call("put None", lambda: pool.putconn(None))


SCENARIOS: list[tuple[Scenario, int, int]] = [
    (_keys, 2, 2),
    (_key_zero, 2, 2),
    (_unkeyed, 3, 3),
    (_put_close, 1, 1),
    (_closeall, 2, 2),
    (_returned_in_transaction, 1, 1),
    (_returned_closed, 1, 1),
    (_strangers, 1, 1),
]


@pytest.mark.parametrize(
    ("scenario", "minconn", "maxconn"), SCENARIOS, ids=[s[0].__name__ for s in SCENARIOS]
)
def test_same_outcomes_as_psycopg2_pool(
    pools: Pools, scenario: Scenario, minconn: int, maxconn: int
) -> None:
    _compare(pools, scenario, minconn, maxconn)


def test_error_messages_start_like_psycopg2s(pools: Pools) -> None:
    # Code that matches psycopg2.pool's messages with startswith/in keeps working.
    messages: dict[str, list[str]] = {"theirs": [], "ours": []}
    for side, make in zip(messages, _factories(pools, threaded=True), strict=True):
        pool = make(0, 1)
        held = pool.getconn()
        for call in (pool.getconn, pool.closeall, pool.getconn, pool.closeall):
            try:
                call()
            except psycopg2.pool.PoolError as error:
                messages[side].append(str(error))
        assert held.closed
    assert len(messages["ours"]) == len(messages["theirs"]) == 3
    for theirs, ours in zip(messages["theirs"], messages["ours"], strict=True):
        assert ours.startswith(theirs), (ours, theirs)


def test_same_constructor_signature_and_attributes(pools: Pools) -> None:
    theirs = pools.add(psycopg2.pool.ThreadedConnectionPool(1, 3, pools.dsn, connect_timeout=5))
    ours = pools.add(pgpool.ThreadedConnectionPool(1, 3, pools.dsn, connect_timeout=5))
    for pool in (theirs, ours):
        assert (pool.minconn, pool.maxconn, pool.closed) == (1, 3, False)
        conn = pool.getconn()
        assert isinstance(conn, psycopg2.extensions.connection)
        assert conn.info.dsn_parameters["connect_timeout"] == "5"
        pool.putconn(conn, None, False)  # positional, as psycopg2 allows
    assert isinstance(ours, pgpool.AbstractConnectionPool)


# -- where pgpool differs on purpose: psycopg2.pool's bugs -----------------------------------------


def test_wrong_key(pools: Pools) -> None:
    # psycopg2.pool: putconn(conn, key="wrong") puts conn on the idle list (when fewer than
    # minconn are idle), then raises KeyError; the next getconn hands out conn although its
    # owner still holds it.
    theirs = pools.add(psycopg2.pool.ThreadedConnectionPool(1, 2, pools.dsn))
    conn = theirs.getconn()
    with pytest.raises(KeyError):
        theirs.putconn(conn, key="wrong")
    assert theirs.getconn() is conn  # handed to a second caller: the bug
    ours = pools.threaded(1, 2, timeout=0)
    conn = ours.getconn()
    with pytest.raises(pgpool.PoolError):
        ours.putconn(conn, key="wrong")
    assert ours.getconn() is not conn


def test_rollback_failure(pools: Pools, dsn: str) -> None:
    # psycopg2.pool: a rollback that raises in putconn skips the bookkeeping and leaks the
    # slot for good (when it rolls back at all: only while fewer than minconn are idle).
    # pgpool discards the connection and frees the slot.
    outcomes = {}
    for side, pool in (
        ("theirs", pools.add(psycopg2.pool.ThreadedConnectionPool(1, 1, dsn))),
        ("ours", pools.threaded(1, 1, dsn, timeout=0)),
    ):
        conn = pool.getconn()
        select_one(conn)  # leaves a transaction open
        terminate_pid(dsn, conn.info.backend_pid)
        try:
            pool.putconn(conn)
            returned = "ok"
        except psycopg2.Error as error:
            returned = type(error).__name__
        try:
            pool.putconn(pool.getconn())
            after = "serves"
        except psycopg2.pool.PoolError:
            after = "exhausted"
        outcomes[side] = (returned, after)
    assert outcomes == {"theirs": ("OperationalError", "exhausted"), "ours": ("ok", "serves")}


DOWN = "host=127.0.0.1 port=1 connect_timeout=2"  # nothing listens: refused, for real


def _outcome(pool: Any, **getconn: Any) -> tuple[str, str | None]:
    try:
        pool.putconn(pool.getconn(**getconn))
    except psycopg2.Error as error:
        cause = error.__cause__
        return type(error).__name__, None if cause is None else type(cause).__name__
    return "ok", None  # pragma: no cover - nothing listens on port 1


def test_server_down_a_waiting_caller_gets_pool_timeout_caused_by_the_error(
    pools: Pools,
) -> None:
    """compat.md's "server down" row: psycopg2.pool raises the driver's error at once; a
    Threaded pgpool caller that can wait gets PoolTimeout at its deadline, caused by that
    error; one with timeout=0, and a Simple pool's, get the driver's error at once."""
    theirs = pools.add(psycopg2.pool.ThreadedConnectionPool(0, 2, DOWN))
    # 1 s: the caller's wait starts the connector, whose first connect must fail within it
    # for the PoolTimeout to carry the driver's error; on a loaded machine 0.2 s was short.
    ours = pools.threaded(0, 2, DOWN, timeout=1.0)
    simple = pools.simple(0, 2, DOWN)
    assert _outcome(theirs) == ("OperationalError", None)
    assert _outcome(ours) == ("PoolTimeout", "OperationalError")
    assert _outcome(ours, timeout=0) == ("OperationalError", None)
    assert _outcome(simple) == ("OperationalError", None)


def _database_is_down(pool: Any, **getconn: Any) -> str:
    """A request handler as written for psycopg2.pool: OperationalError means "down"."""
    try:
        pool.putconn(pool.getconn(**getconn))
    except psycopg2.OperationalError:
        return "503 database unavailable"
    except psycopg2.pool.PoolError:
        return "503 pool exhausted"
    return "200"  # pragma: no cover - nothing listens on port 1


def test_server_down_the_handler_written_for_psycopg2_pool_still_fires(pools: Pools) -> None:
    """PoolTimeout is an OperationalError, as psycopg_pool's is: the "database is down"
    handler of psycopg2.pool code fires for a caller that waited, not only for one that
    connected itself. So does TooManyWaiting, for a caller refused while the queue is full
    of callers waiting for a server that is down. Both still are PoolErrors."""
    theirs = pools.add(psycopg2.pool.ThreadedConnectionPool(0, 2, DOWN))
    # 1 s: the caller's wait starts the connector, whose first connect must fail within it
    # for the PoolTimeout to carry the driver's error; on a loaded machine 0.2 s was short.
    ours = pools.threaded(0, 2, DOWN, timeout=1.0)
    assert _database_is_down(theirs) == "503 database unavailable"
    assert _database_is_down(ours) == "503 database unavailable"
    with pytest.raises(pgpool.PoolTimeout) as waited:
        ours.getconn()
    assert isinstance(waited.value, psycopg2.pool.PoolError)
    assert isinstance(waited.value.__cause__, psycopg2.OperationalError)  # the driver's error
    assert not isinstance(waited.value.__cause__, pgpool.PoolError)
    assert "the last connect failed: OperationalError" in str(waited.value)

    queued = pools.threaded(0, 1, DOWN, timeout=5, max_waiting=1)
    first = Task(queued.getconn)
    wait_until(lambda: queued.stats().waiting == 1)
    assert _database_is_down(queued) == "503 database unavailable"  # refused at once
    with pytest.raises(psycopg2.pool.PoolError):
        queued.getconn()
    queued.closeall()
    assert isinstance(first.error(), pgpool.PoolClosed)


@pytest.mark.parametrize("cls", [pgpool.PoolTimeout, pgpool.TooManyWaiting])
def test_the_operational_pool_errors_are_sound_exceptions(cls: type[Exception]) -> None:
    """Both bases in the MRO, before psycopg2.Error; picklable (a multiprocessing worker
    sends it back) with its message; str and repr as for any exception."""
    mro = cls.__mro__
    assert mro.index(pgpool.PoolError) < mro.index(psycopg2.pool.PoolError)
    assert mro.index(psycopg2.pool.PoolError) < mro.index(psycopg2.OperationalError)
    assert mro.index(psycopg2.OperationalError) < mro.index(psycopg2.Error)
    error = cls("pool 'p' waited 1.000 s")
    assert str(error) == "pool 'p' waited 1.000 s"
    assert repr(error) == f"{cls.__name__}(\"pool 'p' waited 1.000 s\")"
    assert (error.pgcode, error.pgerror) == (None, None)  # what psycopg2 handlers read
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is cls and str(copy) == str(error)


def test_pool_closed_is_a_pool_error_not_an_operational_error() -> None:
    """As psycopg2.pool's closed pool: a closed pool will never serve again, so a retry loop
    around OperationalError must not spin on it."""
    assert issubclass(pgpool.PoolClosed, psycopg2.pool.PoolError)
    assert not issubclass(pgpool.PoolClosed, psycopg2.OperationalError)
    assert not issubclass(pgpool.PoolError, psycopg2.OperationalError)


def test_returned_connections_kept_above_minconn(pools: Pools) -> None:
    theirs = pools.add(psycopg2.pool.ThreadedConnectionPool(0, 2, pools.dsn))
    ours = pools.threaded(0, 2)
    closed = {}
    for side, pool in (("theirs", theirs), ("ours", ours)):
        conn = pool.getconn()
        pool.putconn(conn)
        closed[side] = bool(conn.closed)
    assert closed == {"theirs": True, "ours": False}


def test_exhausted_threaded_pool_waits_instead_of_failing(pools: Pools) -> None:
    ours = pools.threaded(0, 1)  # default timeout: waits
    held = ours.getconn()
    waiter = Task(ours.getconn)
    wait_until(lambda: ours.stats().waiting == 1, "a waiter")
    ours.putconn(held)
    assert waiter.result() is held
    ours.putconn(held)


# -- programs written for psycopg2.pool, with only the import changed ------------------------------

PROGRAM = """
from psycopg2 import pool
import threading


def main(dsn):
    p = pool.ThreadedConnectionPool(2, 4, dsn)
    results = []
    lock = threading.Lock()

    def work(n):
        conn = p.getconn()
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT %s * 2", (n,))
                with lock:
                    results.append(cur.fetchone()[0])
            conn.commit()
        finally:
            p.putconn(conn)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    key_conn = p.getconn("report")
    same = p.getconn("report") is key_conn
    p.putconn(key_conn, key="report")

    p.closeall()
    try:
        p.getconn()
        closed_error = None
    except pool.PoolError as e:
        closed_error = str(e).split(" (")[0]
    return sorted(results), same, p.closed, closed_error
"""


def _run(program: str, dsn: str) -> Any:
    namespace: dict[str, Any] = {"__name__": "program"}
    exec(compile(program, "<program>", "exec"), namespace)
    return namespace["main"](dsn)


def test_psycopg2_pool_program_runs_with_pgpool(dsn: str) -> None:
    expected = _run(PROGRAM, dsn)
    assert expected == ([0, 2, 4, 6], True, True, "connection pool is closed")
    switched = PROGRAM.replace("from psycopg2 import pool", "import pgpool as pool")
    assert switched != PROGRAM
    assert _run(switched, dsn) == expected


# The seed article's db_helper.py, verbatim but for the DSN and the atexit hook (which would
# call closeall a second time at interpreter exit and raise on both pools).
SEED_HELPER = """
from psycopg2 import pool
from psycopg2.extras import RealDictCursor
from contextlib import contextmanager


class DBHelper:
    def __init__(self):
        self._connection_pool = None

    def initialize_connection_pool(self):
        db_dsn = DSN
        self._connection_pool = pool.ThreadedConnectionPool(1, 3, db_dsn)

    @contextmanager
    def get_resource(self, autocommit=True):
        if self._connection_pool is None:
            self.initialize_connection_pool()

        conn = self._connection_pool.getconn()
        conn.autocommit = autocommit
        cursor = conn.cursor(cursor_factory=RealDictCursor)
        try:
            yield cursor, conn
        finally:
            cursor.close()
            self._connection_pool.putconn(conn)

    def shutdown_connection_pool(self):
        if self._connection_pool is not None:
            self._connection_pool.closeall()


db_helper = DBHelper()


def main():
    with db_helper.get_resource() as (cursor, _):
        cursor.execute("SELECT 'Ada' AS name UNION ALL SELECT 'Bob' ORDER BY 1")
        names = [record["name"] for record in cursor.fetchall()]
    with db_helper.get_resource(autocommit=False) as (cursor, conn):
        cursor.execute("SELECT 1 AS one")
        one = cursor.fetchone()["one"]
        conn.commit()
    db_helper.shutdown_connection_pool()
    return names, one, db_helper._connection_pool.closed
"""


@pytest.mark.parametrize("import_line", ["from psycopg2 import pool", "import pgpool as pool"])
def test_seed_article_helper_runs_on_both(dsn: str, import_line: str) -> None:
    program = SEED_HELPER.replace("from psycopg2 import pool", import_line)
    namespace: dict[str, Any] = {"__name__": "db_helper", "DSN": dsn}
    exec(compile(program, "<db_helper>", "exec"), namespace)
    assert namespace["main"]() == (["Ada", "Bob"], 1, True)

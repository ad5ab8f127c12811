"""NullConnectionPool against a real server: no connection outlives its request, yet
maxconn still bounds the process, callers queue first come first served with the pool's
timeout, a caller that finds room connects in its own thread, and the connector opens the
connections the waiters get."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from support import Pools, Task, backend_count, pools_fixture, unique_app_name, wait_until

import pgpool
from pgpool.state import PoolState, Slot, Waiter


@pytest.fixture
def pools(dsn: str) -> Iterator[Pools]:
    yield from pools_fixture(dsn)


def _null(pools: Pools, maxconn: int = 2, *args: Any, **kwargs: Any) -> pgpool.NullConnectionPool:
    pool = pgpool.NullConnectionPool(0, maxconn, *(args or (pools.dsn,)), **kwargs)
    pools.add(pool)
    return pool


def _pid(conn: Any) -> int:
    pid: int = conn.get_backend_pid()
    return pid


def test_every_returned_connection_is_closed(pools: Pools, dsn: str) -> None:
    app = unique_app_name()
    pool = _null(pools, 2, dsn, application_name=app)
    assert pool.stats().size == 0  # nothing opened up front
    first = pool.getconn()
    first_pid = _pid(first)
    pool.putconn(first)
    assert first.closed
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.connections_closed) == (0, 0, 1)
    wait_until(lambda: backend_count(dsn, app) == 0, "the server session to end")
    with pool.connection() as second:  # a new connection, not the first one kept
        assert _pid(second) != first_pid
    assert second.closed
    assert pool.stats().connections_opened == 2


def test_close_false_still_closes(pools: Pools) -> None:
    pool = _null(pools)
    conn = pool.getconn()
    pool.putconn(conn, close=False)
    assert conn.closed and pool.stats().idle == 0


def test_maxconn_bounds_and_a_full_pool_times_out(pools: Pools) -> None:
    pool = _null(pools, 1, timeout=0.2)
    held = pool.getconn()
    with pytest.raises(pgpool.PoolTimeout, match="timed out waiting"):
        pool.getconn()
    stats = pool.stats()
    assert (stats.size, stats.in_use, stats.timeouts) == (1, 1, 1)
    pool.putconn(held)
    conn = pool.getconn()  # the slot freed by the close serves the next caller
    pool.putconn(conn)


def test_waiters_are_served_in_order_by_the_connector(pools: Pools) -> None:
    opened_by: list[str] = []

    def connect(*args: Any, **kwargs: Any) -> psycopg2.extensions.connection:
        opened_by.append(threading.current_thread().name)
        return psycopg2.connect(*args, **kwargs)

    pool = _null(pools, 1, timeout=10, connector=connect)
    held = pool.getconn()
    served: list[int] = []

    def wait_in_line(n: int) -> None:
        conn = pool.getconn()
        served.append(n)
        pool.putconn(conn)

    tasks = []
    for n in range(3):  # queued one at a time, so the queue's order is known
        tasks.append(Task(wait_in_line, n))
        wait_until(lambda n=n: pool.stats().waiting == n + 1, f"{n + 1} waiters")
    pool.putconn(held)
    for task in tasks:
        task.result()
    assert served == [0, 1, 2]
    # The first caller found room and connected in its own thread; each waiter got a
    # connection the connector opened once a return freed a slot.
    assert opened_by == [threading.current_thread().name] + [f"pgpool-connector-{pool.name}"] * 3
    stats = pool.stats()
    assert (stats.size, stats.connections_opened, stats.connections_closed) == (0, 4, 4)


def test_connections_are_closed_outside_the_lock(pools: Pools) -> None:
    locked_at_close: list[bool] = []

    class Watched(psycopg2.extensions.connection):
        def close(self) -> None:
            locked_at_close.append(pool._lock.locked())
            super().close()

    pool = _null(pools, 2, connection_factory=Watched)
    pool.putconn(pool.getconn())
    with pool.connection():
        pass
    conn = pool.getconn()
    pool.closeall()  # a checked-out connection is closed by closeall, also without the lock
    assert conn.closed
    assert locked_at_close == [False, False, False]


@pytest.mark.parametrize("minconn", [1, "2", 3.0])
def test_minconn_must_be_zero(pools: Pools, minconn: Any) -> None:
    with pytest.raises(ValueError, match="minconn must be 0 for a NullConnectionPool"):
        pgpool.NullConnectionPool(minconn, 4, pools.dsn)


def test_resize_changes_maxconn_only(pools: Pools) -> None:
    pool = _null(pools, 2)
    with pytest.raises(ValueError, match="minconn must be 0"):
        pool.resize(1, 4)
    assert (pool.minconn, pool.maxconn) == (0, 2)  # unchanged
    pool.resize(0, 4)
    assert pool.maxconn == 4
    conns = [pool.getconn() for _ in range(4)]
    for conn in conns:
        pool.putconn(conn)
    assert pool.stats().size == 0


def test_misuse_is_still_refused(pools: Pools) -> None:
    pool = _null(pools)
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(pgpool.PoolError, match="not checked out from this pool"):
        pool.putconn(conn)  # returned twice: it is gone, not idle
    assert pool.stats().size == 0


def test_callers_with_room_connect_side_by_side_in_their_own_threads(pools: Pools) -> None:
    started = threading.Barrier(2, timeout=10)
    opened_by: set[str] = set()

    def connect(*args: Any, **kwargs: Any) -> psycopg2.extensions.connection:
        opened_by.add(threading.current_thread().name)
        started.wait()  # both connects in flight at once: neither waits for the other
        return psycopg2.connect(*args, **kwargs)

    pool = _null(pools, 2, timeout=10, connector=connect)  # max_connecting 2 by default
    tasks = [Task(pool.getconn, name=f"caller-{n}") for n in range(2)]
    conns = [task.result() for task in tasks]
    assert opened_by == {"caller-0", "caller-1"}
    for conn in conns:
        pool.putconn(conn)
    assert pool.stats().size == 0


def test_a_connection_opened_for_a_waiter_that_left_is_closed(pools: Pools, dsn: str) -> None:
    # The connector opens a connection for a waiter, slowly; the waiter times out meanwhile.
    # A null pool keeps nothing idle: with nobody else waiting, the connection is closed at
    # once (and counted), not left idle until max_idle.
    app = unique_app_name()
    gate = threading.Event()

    def connect(*args: Any, **kwargs: Any) -> psycopg2.extensions.connection:
        if threading.current_thread().name.startswith("pgpool-connector-"):
            assert gate.wait(10), "the test never opened the gate"
        return psycopg2.connect(*args, **kwargs)

    pool = _null(pools, 1, dsn, application_name=app, connector=connect)
    held = pool.getconn()  # the caller finds room and connects itself, at once
    # The pool is full: it queues for the connector (its timeout only has to outlast the
    # next two steps, and is then waited out).
    waiter = Task(lambda: pool.getconn(timeout=2.0))
    wait_until(lambda: pool.stats().waiting == 1, "the caller to queue")
    pool.putconn(held)  # frees the slot: the connector starts a connect, held at the gate
    wait_until(lambda: pool.stats().connecting == 1, "the connector to start its connect")
    assert isinstance(waiter.error(), pgpool.PoolTimeout)
    gate.set()
    wait_until(lambda: pool.stats().connections_closed == 2, "the unneeded connection to close")
    stats = pool.stats()
    assert (stats.size, stats.idle, stats.connections_opened) == (0, 0, 2)
    wait_until(lambda: backend_count(dsn, app) == 0, "its server session to end")


def test_a_waiter_interrupted_after_being_served_leaves_nothing_idle() -> None:
    """A waiter handed a connection, then interrupted before getconn returned (a signal
    handler raised): with nobody else waiting, a null pool closes what it gives back
    instead of keeping it idle. Pure bookkeeping: the interrupt cannot be timed against a
    real server, and the connections are stand-ins."""
    state = PoolState(pgpool.PoolOptions(minconn=0, maxconn=1), keeps_idle=False)
    now = 1000.0
    assert state.reserve_connect(now, can_wait=False)
    slot = Slot(object(), now, 9999.0, (), "UTF8", last_used=now)
    assert state.connected(slot, None, now)
    waiter = Waiter(None, now, now + 10)
    state.enqueue(waiter)
    state.begin_return(slot, now)
    assert state.end_return(slot, now, keep=True)  # someone waits: it goes to the waiter
    assert waiter.slot is slot and not state.idle
    aside = state.abandon(waiter, now)
    assert aside is slot and not state.idle  # parked in `returning`, to be closed
    assert not state.end_return(aside, now, keep=True)  # nobody waits: closed, not idle
    assert (state.size, state.connections_closed) == (0, 1)
    state.check_invariants()

"""Blocking checkout: timeouts, FIFO fairness, the waiting queue, and connects that are
slow or fail, against a real server.

Synchronisation is by observation, never by sleeping: a test waits (with a deadline that
only ends a hung test) until `pool.stats()` shows the waiters it expects. Real timeouts
appear only as short deadlines, and elapsed time only as a lower bound.
"""

from __future__ import annotations

import logging
import math
import re
import signal
import socket
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

import psycopg2
import pytest
from support import (
    FakeClock,
    Pools,
    Task,
    assert_serves_maxconn,
    backend_count,
    pools_fixture,
    select_one,
    unique_app_name,
    wait_until,
)

import pgpool
from pgpool.bell import Bell
from pgpool.state import ORPHAN_GRACE, PoolState, Slot, Waiter


@pytest.fixture
def pools(dsn: str) -> Iterator[Pools]:
    yield from pools_fixture(dsn)


def _waiting(pool: pgpool.AbstractConnectionPool, n: int) -> None:
    wait_until(lambda: pool.stats().waiting == n, f"{n} waiters in {pool.name}")


def _checkout_and_return(pool: pgpool.AbstractConnectionPool, timeout: float = 10) -> Any:
    conn = pool.getconn(timeout=timeout)
    pool.putconn(conn)
    return conn


class GatedConnector:
    """A `connector=` that, once armed, blocks every connect until `gate` is set.

    Counts connects in flight, and the most ever in flight at once.
    """

    def __init__(self, fail_with: BaseException | None = None) -> None:
        self.armed = False
        self.gate = threading.Event()
        self.fail_with = fail_with
        self._lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fail_with = self.fail_with  # decided on entry, whatever the test changes later
        with self._lock:
            self.calls += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
        try:
            if self.armed and not self.gate.wait(10):
                raise AssertionError("the test never opened the connect gate")
            if fail_with is not None:
                raise fail_with
            return psycopg2.connect(*args, **kwargs)
        finally:
            with self._lock:
                self.in_flight -= 1

    def wait_in_flight(self, n: int) -> None:
        wait_until(lambda: self.in_flight == n, f"{n} connects in flight")


# -- timeouts --------------------------------------------------------------------------------


def test_timeout_waits_then_raises_pool_timeout(pools: Pools) -> None:
    pool = pools.threaded(1, 1, name="tiny", timeout=0.2)
    held = pool.getconn()
    start = time.monotonic()
    with pytest.raises(pgpool.PoolTimeout) as raised:
        pool.getconn()
    waited = time.monotonic() - start
    assert waited >= 0.19  # a lower bound: it did wait for its timeout
    message = str(raised.value)
    assert "'tiny'" in message
    assert "timed out waiting for a connection" in message
    assert "timeout 0.2 s" in message
    assert re.search(r"waited \d+\.\d{3} s", message), message
    assert "1 in use" in message and "maxconn 1" in message
    s = pool.stats()
    assert (s.timeouts, s.waits, s.waiting, s.in_use, s.idle) == (1, 1, 0, 1, 0)
    assert s.wait_time >= 0.19
    pool.putconn(held)
    assert pool.stats().idle == 1  # the timed-out caller left nothing behind


def test_timeout_zero_fails_without_queueing(pools: Pools) -> None:
    pool = pools.threaded(1, 1, name="zero")
    held = pool.getconn()
    with pytest.raises(pgpool.PoolTimeout, match=r"connection pool exhausted: pool 'zero'"):
        pool.getconn(timeout=0)
    s = pool.stats()
    assert (s.timeouts, s.waits, s.waiting) == (1, 0, 0)
    pool.putconn(held)


def test_pool_timeout_zero_applies_to_every_call(pools: Pools) -> None:
    pool = pools.threaded(0, 1, timeout=0)
    held = pool.getconn()
    with pytest.raises(pgpool.PoolTimeout, match="exhausted"):
        pool.getconn()
    assert pool.stats().waits == 0
    pool.putconn(held)


def test_per_call_timeout_overrides_a_long_pool_timeout(pools: Pools) -> None:
    pool = pools.threaded(0, 1, timeout=30)  # long: a call that ignored its own would hang
    held = pool.getconn(timeout=10)  # (a regression fails here, not after 300 s)
    with pytest.raises(pgpool.PoolTimeout, match=r"timeout 0\.05 s"):
        pool.getconn(timeout=0.05)
    with pytest.raises(pgpool.PoolTimeout, match=r"timeout 0\.05 s"), pool.connection(0.05):
        pass  # pragma: no cover
    pool.putconn(held)


def test_per_call_timeout_overrides_a_zero_pool_timeout(pools: Pools) -> None:
    pool = pools.simple(0, 1)  # Simple defaults to timeout 0 ...
    held = pool.getconn()
    waiter = Task(pool.getconn, None, 10)  # ... but this call may wait 10 s
    _waiting(pool, 1)
    pool.putconn(held)
    assert waiter.result() is held
    pool.putconn(held)


# -- fairness ----------------------------------------------------------------------------


def test_waiters_are_served_in_arrival_order(pools: Pools) -> None:
    pool = pools.threaded(1, 1)
    held = pool.getconn()
    served: list[int] = []

    def take(n: int) -> None:
        conn = pool.getconn(timeout=10)
        served.append(n)
        pool.putconn(conn)

    tasks = []
    for n in range(6):
        tasks.append(Task(take, n))
        _waiting(pool, n + 1)  # queue them in a known order
    pool.putconn(held)
    for task in tasks:
        task.result()
    assert served == list(range(6))
    s = pool.stats()
    assert (s.waits, s.timeouts, s.in_use, s.idle) == (6, 0, 0, 1)


def test_returning_thread_does_not_overtake_a_waiter(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    conn = pool.getconn()
    got = threading.Event()
    release = threading.Event()

    def wait_then_hold() -> Any:
        mine = pool.getconn(timeout=10)
        got.set()
        release.wait(10)
        pool.putconn(mine)
        return mine

    waiter = Task(wait_then_hold)
    _waiting(pool, 1)
    pool.putconn(conn)
    # The connection went to the waiter in putconn itself: asking again at once finds none.
    with pytest.raises(pgpool.PoolTimeout):
        pool.getconn(timeout=0)
    assert got.wait(10)
    release.set()
    assert waiter.result() is conn
    assert _checkout_and_return(pool) is conn


def test_new_connects_do_not_overtake_waiters(pools: Pools) -> None:
    # maxconn 2, one connection in use: A and B queue, and the connector opens a connection
    # for them (stalled). A newcomer that cannot wait is refused: the pool is full. When the
    # connect finishes, the new connection goes to A, the oldest waiter; the next connection
    # to come back goes to B, not to a newcomer.
    connector = GatedConnector()
    pool = pools.threaded(0, 2, connector=connector)
    first = pool.getconn()
    connector.armed = True
    a = Task(pool.getconn, None, 10, name="A")
    connector.wait_in_flight(1)
    _waiting(pool, 1)
    b = Task(pool.getconn, None, 10, name="B")
    _waiting(pool, 2)
    with pytest.raises(pgpool.PoolTimeout):
        pool.getconn(timeout=0)  # a newcomer is refused: the waiters are ahead of it
    connector.gate.set()
    second = a.result()
    assert second is not first
    pool.putconn(first)
    assert b.result() is first
    assert connector.calls == 2  # the first getconn's, and A's: none for B
    pool.putconn(first)
    pool.putconn(second)


# -- the waiting queue -------------------------------------------------------------------------


def test_max_waiting_refuses_extra_callers_at_once(pools: Pools) -> None:
    pool = pools.threaded(1, 1, name="q", max_waiting=2)
    held = pool.getconn()
    waiters = [Task(_checkout_and_return, pool), Task(_checkout_and_return, pool)]
    _waiting(pool, 2)
    with pytest.raises(pgpool.TooManyWaiting, match=r"'q'.*max_waiting=2"):
        pool.getconn(timeout=10)
    assert pool.stats().waiting == 2  # the refused caller did not join the queue
    pool.putconn(held)
    for task in waiters:
        assert task.result() is held
    s = pool.stats()
    assert (s.waits, s.waiting, s.in_use, s.timeouts) == (2, 0, 0, 0)


def test_closeall_wakes_every_waiter_with_pool_closed(pools: Pools) -> None:
    pool = pools.threaded(0, 1, name="bye")
    held = pool.getconn()
    waiters = [Task(pool.getconn) for _ in range(3)]
    _waiting(pool, 3)
    pool.closeall()
    for task in waiters:
        error = task.error()
        assert isinstance(error, pgpool.PoolClosed), error
        assert "'bye'" in str(error)
    assert held.closed


def test_same_key_cannot_wait_twice(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    held = pool.getconn()
    first = Task(pool.getconn, "k", 10)
    _waiting(pool, 1)
    with pytest.raises(pgpool.PoolError, match="already getting a connection with key str 'k'"):
        pool.getconn("k", timeout=10)
    pool.putconn(held)
    conn = first.result()
    assert pool.getconn("k") is conn
    pool.putconn(conn)


def test_same_key_from_two_threads_at_once_means_one_connection(pools: Pools) -> None:
    # psycopg2.pool semantics: while a key is checked out, getconn(key) returns the same
    # connection. B asks for key "k" while A's getconn("k") is still connecting: B must not
    # get a second connection under the same key (either the same one, or a PoolError as
    # for two waiters with one key), and returning under the key must keep the books right.
    connector = GatedConnector()
    pool = pools.threaded(0, 2, connector=connector)
    connector.armed = True
    a = Task(pool.getconn, "k", 10, name="A")
    connector.wait_in_flight(1)
    b = Task(pool.getconn, "k", 10, name="B")
    wait_until(lambda: b.done or connector.in_flight == 2 or pool.stats().waiting == 1, "B")
    connector.gate.set()
    conns = []
    for task in (a, b):
        error = task.error()
        if error is None:
            conns.append(task.result())
        else:
            assert isinstance(error, pgpool.PoolError), error
    distinct = {id(c): c for c in conns}
    assert len(distinct) == 1, "two connections handed out under one key"
    for conn in distinct.values():
        pool.putconn(conn, key="k")
    assert pool.stats().in_use == 0
    assert_serves_maxconn(pool)


@pytest.mark.parametrize("how", ["close", "closed by user", "expired", "reset fails"])
def test_waiter_served_when_a_returned_connection_is_discarded(pools: Pools, how: str) -> None:
    clock = FakeClock()

    def reset(conn: Any) -> None:
        if how == "reset fails":
            raise RuntimeError("reset failed")

    # minconn 1: the first connection is there without waiting, for a wait on the FakeClock
    # (which the test alone moves) would never end if the connector failed to serve it.
    pool = pools.threaded(1, 1, max_lifetime=100, clock=clock, reset=reset)
    held = pool.getconn()
    waiter = Task(pool.getconn, None, 10, name="waiter")
    _waiting(pool, 1)
    if how == "expired":
        clock.advance(101)
    if how == "closed by user":
        held.close()
    pool.putconn(held, close=how == "close")
    assert held.closed
    fresh = waiter.result()  # the freed slot lets the waiter open a new connection
    assert fresh is not held
    assert select_one(fresh) == 1
    pool.putconn(fresh)


def test_infinite_timeout_waits_until_served(pools: Pools) -> None:
    # `timeout=math.inf` ("wait as long as it takes") is accepted by the option checks, so it
    # must work: the waiter is served when a connection comes back.
    pool = pools.threaded(0, 1, timeout=math.inf)
    held = pool.getconn(timeout=10)  # (a regression fails here, instead of hanging)
    waiter = Task(pool.getconn)
    _waiting(pool, 1)
    assert not waiter.done, f"getconn(timeout=inf) failed: {waiter.error()!r}"
    pool.putconn(held)
    conn = waiter.result()
    assert conn is held
    pool.putconn(conn)
    assert_serves_maxconn(pool)


class _Interrupted(Exception):
    pass


def test_waiter_interrupted_by_a_signal_leaves_the_queue(pools: Pools) -> None:
    # Ctrl-C (or any signal handler that raises) while getconn waits: the caller is gone, so
    # the connection returned next must stay in the pool, not go to the departed caller.
    pool = pools.threaded(0, 1)
    held = pool.getconn()

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise _Interrupted

    def interrupt_once_queued() -> None:
        _waiting(pool, 1)
        signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGALRM)

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with pytest.raises(_Interrupted):
            killer = Task(interrupt_once_queued, name="interrupter")
            pool.getconn(timeout=10)
        killer.result()
    finally:
        signal.signal(signal.SIGALRM, previous)
    assert pool.stats().waiting == 0
    pool.putconn(held)
    s = pool.stats()
    assert (s.idle, s.in_use) == (1, 0)
    assert_serves_maxconn(pool)


def test_closeall_during_a_connect_closes_the_new_connection(pools: Pools, dsn: str) -> None:
    app = unique_app_name()
    connector = GatedConnector()
    pool = pools.threaded(0, 2, dsn, application_name=app, connector=connector)
    connector.armed = True
    opener = Task(pool.getconn, None, 10, name="opener")
    connector.wait_in_flight(1)
    pool.closeall()
    assert isinstance(opener.error(), pgpool.PoolClosed)  # at once: not after the connect
    connector.gate.set()
    # The connector's connect finishes after closeall: counted, then closed at once.
    wait_until(lambda: pool.stats().connecting == 0, "the late connect to finish")
    wait_until(lambda: backend_count(dsn, app) == 0, "the late connection closed")
    s = pool.stats()
    assert (s.connections_opened, s.connections_closed) == (1, 1)


def test_closeall_during_a_return_closes_the_returning_connection(pools: Pools) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow_reset(conn: Any) -> None:
        entered.set()
        release.wait(10)

    pool = pools.threaded(0, 2, reset=slow_reset)
    conn = pool.getconn()
    returning = Task(pool.putconn, conn, name="returner")
    assert entered.wait(10)
    pool.closeall()
    release.set()
    assert returning.error() is None  # the caller returned it properly: no error
    assert conn.closed
    s = pool.stats()
    assert (s.in_use, s.idle, s.size) == (0, 0, 0)


# -- slow and failing connects -------------------------------------------------------------


def test_slow_connect_does_not_block_other_callers(pools: Pools) -> None:
    # A waiter starts the connector's connect, which stalls. Everything else goes on: the
    # waiter is served by a connection returned meanwhile (it does not sit through the
    # connect), and the pool serves other calls; the new connection then joins the idle.
    connector = GatedConnector()
    pool = pools.threaded(1, 3, connector=connector, name="slow")
    idle_conn = pool.getconn()
    connector.armed = True
    waiter = Task(pool.getconn, None, 10)  # queues; the connector's connect stalls
    connector.wait_in_flight(1)

    def meanwhile() -> tuple[Any, Any, str, pgpool.PoolStats]:
        pool.putconn(idle_conn)  # handed to the waiter at once
        served = waiter.result()
        pool.putconn(served)
        again = pool.getconn(timeout=0)
        assert select_one(again) == 1
        pool.putconn(again)
        return served, again, repr(pool), pool.stats()

    try:
        # Run with a deadline: if the stalled connect held the pool's lock, this would hang.
        served, again, text, stats = Task(meanwhile).result(timeout=10)
    finally:
        connector.gate.set()
    assert served is idle_conn and again is idle_conn
    assert "connecting 1" in text
    assert (stats.connecting, stats.idle) == (1, 1)
    wait_until(lambda: pool.stats().idle == 2, "the new connection joining the idle stack")
    assert pool.stats().connecting == 0
    assert_serves_maxconn(pool)


def test_failed_connect_raises_the_driver_error_unchanged_and_frees_its_slot(
    pools: Pools,
) -> None:
    # A caller that cannot wait connects itself, as with psycopg2.pool: it gets the
    # driver's own error, unchanged.
    failure = psycopg2.OperationalError("server is on fire")
    connector = GatedConnector(fail_with=failure)
    pool = pools.threaded(0, 1, connector=connector)
    with pytest.raises(psycopg2.OperationalError) as raised:
        pool.getconn(timeout=0)
    assert raised.value is failure
    assert not isinstance(raised.value, pgpool.PoolError)
    s = pool.stats()
    assert (s.connect_errors, s.connecting, s.size, s.connections_opened) == (1, 0, 0, 0)
    connector.fail_with = None  # the server is back
    conn = pool.getconn(timeout=10)  # past the short back-off, the slot serves again
    assert select_one(conn) == 1
    pool.putconn(conn)
    assert pool.stats().connections_opened == 1


def test_waiter_times_out_with_the_last_connect_error(pools: Pools) -> None:
    # A caller that waits while the connector's connects fail is not told a bare "timed
    # out": the PoolTimeout names the driver's error, class and message, and carries it
    # as its __cause__ (a traceback shows both). Retries follow the back-off meanwhile.
    failure = psycopg2.OperationalError("server is on fire")
    connector = GatedConnector(fail_with=failure)
    pool = pools.threaded(0, 1, connector=connector, name="burning")
    with pytest.raises(pgpool.PoolTimeout) as raised:
        # 2 s: the back-off (10 ms, doubling) retries several times in it, even on a loaded
        # machine where the connector's first attempt comes late; 0.3 s did not always.
        pool.getconn(timeout=2.0)
    message = str(raised.value)
    assert "timed out waiting for a connection: pool 'burning'" in message
    assert "the last connect failed: OperationalError: server is on fire" in message
    assert raised.value.__cause__ is failure
    s = pool.stats()
    assert s.connect_errors >= 2, "the connector retried during the wait"
    # Not `size`: it counts a retry the connector may be making at this very moment.
    assert (s.timeouts, s.waits, s.waiting, s.idle, s.in_use) == (1, 1, 0, 0, 0)
    connector.fail_with = None  # the server is back: the next caller is served
    conn = pool.getconn(timeout=10)
    assert select_one(conn) == 1
    pool.putconn(conn)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # nothing listens on it any more


def test_connect_to_a_bad_port_raises_operational_error(pools: Pools) -> None:
    pool = pools.threaded(
        0, 2, host="127.0.0.1", port=_closed_port(), dbname="postgres", connect_timeout=5
    )
    for _ in range(2):
        with pytest.raises(psycopg2.OperationalError) as raised:
            pool.getconn(timeout=0)  # connects itself: the driver's error
        assert not isinstance(raised.value, pgpool.PoolError)
    s = pool.stats()
    assert (s.connect_errors, s.size, s.connecting) == (2, 0, 0)
    with pytest.raises(pgpool.PoolTimeout, match=r"OperationalError: .*refused") as waited:
        pool.getconn(timeout=0.2)  # waits for the connector: a timeout naming the error
    assert isinstance(waited.value.__cause__, psycopg2.OperationalError)


def test_bad_port_fails_the_constructor() -> None:
    with pytest.raises(psycopg2.OperationalError) as raised:
        pgpool.ThreadedConnectionPool(
            1, 2, host="127.0.0.1", port=_closed_port(), connect_timeout=5
        )
    assert not isinstance(raised.value, pgpool.PoolError)  # the driver's, not a PoolTimeout


def test_failing_configure_closes_the_new_connection_and_frees_its_slot(
    pools: Pools, dsn: str
) -> None:
    app = unique_app_name()
    fail = [True]

    def configure(conn: Any) -> None:
        if fail[0]:
            raise RuntimeError("configure failed")

    pool = pools.threaded(0, 1, dsn, application_name=app, configure=configure)
    with pytest.raises(RuntimeError, match="configure failed"):
        pool.getconn(timeout=0)
    assert pool.stats().size == 0
    wait_until(lambda: backend_count(dsn, app) == 0, "the half-made connection closed")
    fail[0] = False
    conn = pool.getconn(timeout=10)
    assert select_one(conn) == 1
    pool.putconn(conn)


def test_waiter_is_served_when_the_back_off_after_a_failed_connect_ends(pools: Pools) -> None:
    # The connector's connect fails while a caller waits. The failure starts a short
    # back-off (milliseconds); when it ends the connector tries again, and the waiter is
    # served then, not at its own (long) timeout.
    connector = GatedConnector(fail_with=psycopg2.OperationalError("refused"))
    pool = pools.threaded(0, 1, connector=connector)
    connector.armed = True
    waiter = Task(pool.getconn, None, 10, name="waiter")
    connector.wait_in_flight(1)
    connector.fail_with = None  # the server is back, but the attempt in flight still fails
    connector.gate.set()
    conn = waiter.result(timeout=5)  # served within ms; 5 s only ends a hung test
    assert select_one(conn) == 1
    s = pool.stats()
    assert (s.connect_errors, s.connections_opened, connector.calls) == (1, 1, 2)
    pool.putconn(conn)


def test_connector_goes_on_while_waiters_outnumber_connects(pools: Pools) -> None:
    # A and B wait on an empty pool. The connector opens one connection at a time: the
    # first goes to A, and since B still waits with nothing in flight, it opens another.
    connector = GatedConnector()
    pool = pools.threaded(0, 3, connector=connector)
    connector.armed = True
    a = Task(pool.getconn, None, 10, name="A")
    connector.wait_in_flight(1)
    b = Task(pool.getconn, None, 10, name="B")
    _waiting(pool, 2)
    assert pool.stats().connecting == 1
    connector.gate.set()
    conn_a = a.result()
    conn_b = b.result(timeout=5)  # served within ms; 5 s only ends a hung test
    assert conn_a is not conn_b
    assert (connector.calls, connector.peak) == (2, 1)
    pool.putconn(conn_a)
    pool.putconn(conn_b)


def test_max_connecting_bounds_concurrent_connects(pools: Pools) -> None:
    # Callers of a Simple pool (no connector) that may wait connect themselves, at most
    # max_connecting at a time; the others queue and are given the right to connect next.
    connector = GatedConnector()
    connector.armed = True
    pool = pools.simple(0, 6, connector=connector, max_connecting=2)
    tasks = [Task(pool.getconn, None, 10, name=f"caller-{n}") for n in range(6)]
    connector.wait_in_flight(2)
    _waiting(pool, 4)
    s = pool.stats()
    assert (s.connecting, s.waiting, s.in_use) == (2, 4, 0)
    connector.gate.set()
    conns = [task.result(timeout=5) for task in tasks]
    assert len({id(c) for c in conns}) == 6
    assert connector.peak == 2
    assert connector.calls == 6
    for conn in conns:
        pool.putconn(conn)
    assert pool.stats().idle == 6


def test_connector_opens_one_connection_at_a_time(pools: Pools) -> None:
    # The Threaded pool's connector opens connections for waiters one after the other
    # (as HikariCP's does): six callers on an empty pool, one connect in flight at a time.
    connector = GatedConnector()
    connector.armed = True
    pool = pools.threaded(0, 6, connector=connector, max_connecting=2)
    tasks = [Task(pool.getconn, None, 10, name=f"caller-{n}") for n in range(6)]
    connector.wait_in_flight(1)
    _waiting(pool, 6)
    s = pool.stats()
    assert (s.connecting, s.waiting, s.in_use) == (1, 6, 0)
    connector.gate.set()
    conns = [task.result(timeout=5) for task in tasks]
    assert len({id(c) for c in conns}) == 6
    assert (connector.peak, connector.calls) == (1, 6)
    for conn in conns:
        pool.putconn(conn)
    assert pool.stats().idle == 6


def test_idle_connections_are_served_while_connects_stall(pools: Pools) -> None:
    # With the connector's connect stalled, callers that cannot wait still get the
    # connections that come back, and take no part in the stalled connect.
    connector = GatedConnector()
    pool = pools.threaded(0, 2, connector=connector)
    ready = pool.getconn()
    pool.putconn(ready)
    held = pool.getconn()
    connector.armed = True
    stalled = Task(pool.getconn, None, 10)  # queues: the connector's connect stalls
    connector.wait_in_flight(1)
    pool.putconn(held)  # ... and this serves it at once

    def reuse() -> Any:
        mine = stalled.result()
        pool.putconn(mine)
        return _checkout_and_return(pool, timeout=0)

    try:
        assert Task(reuse).result(timeout=10) is ready
    finally:
        connector.gate.set()
    wait_until(lambda: pool.stats().idle == 2, "the new connection joining the idle stack")


# -- the connector's bell, and orphans -------------------------------------------------------


class CountingBell(Bell):
    """A connector's bell that counts its rings (no thread sleeps on it)."""

    __slots__ = ("rings",)

    def __init__(self) -> None:
        super().__init__()
        self.rings = 0

    def ring(self) -> None:
        self.rings += 1
        super().ring()


def test_queueing_at_a_full_pool_does_not_wake_the_connector() -> None:
    """The connector is rung only while a connect is wanted: waiters outnumber the connects
    in flight *and* the pool has room. Without the second half, every caller that queued at
    a full pool woke the connector for nothing (a spike of 50 callers: 50 wasted rounds).
    Pure bookkeeping, so a PoolState with a bell that counts."""
    state = PoolState(pgpool.PoolOptions(minconn=0, maxconn=2))
    bell = CountingBell()
    state.use_connector(bell)
    now = 1000.0
    for _ in range(2):  # two callers connect (timeout=0 callers do) and keep their connections
        assert state.reserve_connect(now, can_wait=False)
        slot = Slot(object(), now, math.inf, (), "UTF8", last_used=now)
        assert state.connected(slot, None, now)
    assert (state.size, bell.rings) == (2, 0)
    for _ in range(5):
        state.enqueue(Waiter(None, now, now + 10))  # the pool is full: nothing to connect
    assert bell.rings == 0
    gone = next(iter(state.leased.values()))
    state.drop_leased(gone, now, "broken")  # now there is room: one connect is wanted
    assert bell.rings == 1
    state.check_invariants()


def test_an_orphan_waiter_is_dropped_not_handed_the_next_connection(pools: Pools) -> None:
    """A waiter whose thread an exception ended before it left the queue (an orphan) stays
    first in line: the next free connection is handed to nobody, lost for good without
    max_lease. Maintenance drops a waiter still queued ORPHAN_GRACE after its deadline."""
    clock = FakeClock()
    pool = pools.threaded(1, 1, clock=clock)  # minconn 1: no wait on the FakeClock for it
    held = pool.getconn()
    with pool._lock:  # what a caller's getconn leaves behind if its thread dies mid-wait
        pool._state.enqueue(Waiter(None, clock(), clock() + 1.0))
    clock.advance(1.0 + ORPHAN_GRACE / 2)
    pool.maintain()
    assert pool.stats().waiting == 1  # not an orphan yet: it may still be on its way out
    clock.advance(ORPHAN_GRACE)
    pool.maintain()
    assert pool.stats().waiting == 0
    pool.putconn(held)
    assert pool.getconn(timeout=0) is held  # not given to the orphan
    pool.putconn(held)


def test_an_outage_logs_its_retry_schedule_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    """The first failed connect of an outage is a warning; each retry after it is DEBUG,
    with the back-off it starts, so the schedule can be read from the log."""

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise psycopg2.OperationalError("connection refused (on purpose)")

    caplog.set_level(logging.DEBUG, logger="pgpool")
    pool = pgpool.ThreadedConnectionPool(
        1, 1, "", connector=refuse, open=False, maintenance_interval=0.01
    )
    try:
        pool.open()
        wait_until(lambda: pool.stats().connect_errors >= 3, "three failed connects")
    finally:
        pool.closeall()
    schedule = [
        r.getMessage() for r in caplog.records if "failed in a row; backing off" in r.getMessage()
    ]
    assert [re.search(r"(\d+) connect\(s\) failed in a row", m)[1] for m in schedule[:3]] == [
        "1", "2", "3"
    ]  # fmt: skip
    assert all(re.search(r"backing off until t=\d+\.\d{3}$", m) for m in schedule)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "could not open a connection" in warnings[0].getMessage()

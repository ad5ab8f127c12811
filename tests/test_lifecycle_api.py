"""The lifecycle API psycopg_pool users expect (open later, wait, check, resize, drain), each
against the real server, with the pool's gauges checked against the server's sessions."""

from __future__ import annotations

import itertools
import sys
import threading
import time
from unittest import mock

import psycopg2
import pytest
from fakes import FakeClock
from faultsupport import (
    count_backends,
    in_thread,
    kill_backends,
    pool_dsn,
    scalar,
    unique_app,
    wait_for,
)

import pgpool
from pgpool.state import PoolState, Reservation, Slot, Waiter
from testbed.embedded import EmbeddedPostgres, run_sql


def _sessions_match(pool: pgpool.AbstractConnectionPool, dsn: str, app: str) -> None:
    """The server sees exactly the connections the pool counts (once closes have landed)."""
    wait_for(
        lambda: count_backends(dsn, app) == pool.stats().size,
        what=f"server sessions == pool size ({pool.stats()})",
    )


def _connector_threads(pool: pgpool.AbstractConnectionPool) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"pgpool-connector-{pool.name}"]


def test_open_false_opens_nothing_until_open(dsn: str) -> None:
    app = unique_app("open-later")
    pool = pgpool.ThreadedConnectionPool(2, 4, pool_dsn(dsn, app), open=False)
    try:
        assert count_backends(dsn, app) == 0 and not _connector_threads(pool)
        with pytest.raises(pgpool.PoolClosed, match="not open yet"):
            pool.getconn()
        pool.open(wait=True, timeout=10)
        assert pool.stats().idle == 2 and len(_connector_threads(pool)) == 1
        _sessions_match(pool, dsn, app)
        pool.open()  # opening an open pool does nothing
        with pool.connection() as conn:
            assert conn.cursor() is not None
    finally:
        pool.closeall()
    with pytest.raises(pgpool.PoolClosed, match="is closed"):
        pool.open()  # closed for good


def test_closeall_before_open_closes_for_good_quietly() -> None:
    """closeall() of a pool created with open=False raised "not open yet" and left it
    openable: a shutdown hook that runs before the app ever opened its pool failed, and the
    pool could still be opened after it. Now it closes it for good, quietly (psycopg_pool's
    close() is quiet too), and a second closeall() raises as usual."""
    pool = pgpool.ThreadedConnectionPool(1, 2, "", open=False)
    pool.closeall()
    assert pool.closed
    with pytest.raises(pgpool.PoolClosed, match="is closed"):
        pool.open()
    with pytest.raises(pgpool.PoolClosed, match="is closed"):
        pool.getconn()
    with pytest.raises(pgpool.PoolClosed):
        pool.closeall()
    assert not _connector_threads(pool)


def test_a_second_open_wait_waits_too(dsn: str) -> None:
    """Two threads open the same pool with wait=True (two app factories, say): the second
    returned at once, with none of minconn ready, because the pool was already open."""
    gate = threading.Event()

    def connect_when_let(*args: object, **kwargs: object) -> object:
        gate.wait(10)
        return psycopg2.connect(*args, **kwargs)

    app = unique_app("open-twice")
    pool = pgpool.ThreadedConnectionPool(
        2, 3, pool_dsn(dsn, app), connector=connect_when_let, open=False
    )
    try:
        _thread, first = in_thread(lambda: pool.open(wait=True, timeout=10))
        wait_for(lambda: pool.stats().connecting > 0, what="the first open connecting")
        with pytest.raises(pgpool.PoolTimeout, match="0 of minconn 2 ready"):
            pool.open(wait=True, timeout=0.2)  # the connects are held back: it must wait
        gate.set()
        pool.open(wait=True, timeout=10)
        assert pool.stats().idle == 2
        assert first.done.wait(10) and first.error is None
    finally:
        gate.set()
        pool.closeall()


def test_a_simple_pool_opens_inline_and_fails_fast(dsn: str) -> None:
    pool = pgpool.SimpleConnectionPool(1, 2, dsn, open=False)
    pool.open()
    assert pool.stats().idle == 1
    pool.closeall()
    down = pgpool.SimpleConnectionPool(1, 2, "host=127.0.0.1 port=1 connect_timeout=2", open=False)
    with pytest.raises(psycopg2.OperationalError) as raised:
        down.open()
    assert not isinstance(raised.value, pgpool.PoolError)  # the driver's, not a PoolTimeout
    assert down.stats().connecting == 0  # the failed connect gave its slot back


def test_open_while_the_server_is_down_connects_when_it_returns(
    restartable_server: EmbeddedPostgres,
) -> None:
    server = restartable_server
    app = unique_app("open-down")
    dsn = pool_dsn(server.dsn, app, connect_timeout=2)
    server.stop()
    pool = pgpool.ThreadedConnectionPool(2, 3, dsn, open=False, maintenance_interval=0.1)
    try:
        pool.open(wait=False)  # returns at once; the connector keeps trying with back-off
        # A connect has failed before the wait (on a loaded machine the connector's first
        # attempt may come after a short wait's deadline, with no error yet to name).
        wait_for(lambda: pool.stats().connect_errors >= 1, what="a failed connect")
        with pytest.raises(pgpool.PoolTimeout, match=r"0 of minconn 2 ready.*connect failed"):
            pool.wait(timeout=0.5)
        server.start()
        pool.wait(timeout=15)
        assert pool.stats().idle == 2
        _sessions_match(pool, server.dsn, app)
    finally:
        pool.closeall()


def test_reconnect_failed_is_called_each_reconnect_timeout_of_failing_connects(
    restartable_server: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """A pool opened while the server is down keeps trying with its back-off; every
    `reconnect_timeout` of connects failing in a row, it calls `reconnect_failed(pool)`
    from the connector's thread, without its lock. A callback that raises is logged and
    stops nothing: once the server is back, the pool fills up."""
    server = restartable_server
    app = unique_app("reconnect-failed")
    server.stop()
    calls: list[tuple[float, object, str, bool]] = []

    def gave_up(pool: pgpool.AbstractConnectionPool) -> None:
        calls.append((time.monotonic(), pool, threading.current_thread().name, pool._lock.locked()))
        raise RuntimeError("the application's callback failed")

    pool = pgpool.ThreadedConnectionPool(
        1, 2, pool_dsn(server.dsn, app, connect_timeout=2), open=False,
        reconnect_timeout=0.3, reconnect_failed=gave_up,
    )  # fmt: skip
    try:
        opened = time.monotonic()
        pool.open(wait=False)
        wait_for(lambda: len(calls) >= 2, timeout=15, what="reconnect_failed called twice")
        times = [opened] + [call[0] for call in calls[:2]]
        assert all(later - earlier >= 0.3 for earlier, later in itertools.pairwise(times))
        assert all(call[1] is pool for call in calls)
        assert {call[2] for call in calls} == {f"pgpool-connector-{pool.name}"}
        assert not any(call[3] for call in calls), "called with the pool's lock held"
        assert "the reconnect_failed callback raised" in caplog.text
        server.start()
        pool.wait(timeout=15)
        _sessions_match(pool, server.dsn, app)
    finally:
        pool.closeall()


def test_sys_exit_in_reconnect_failed_does_not_kill_the_connector() -> None:
    """The README offered `sys.exit()` in reconnect_failed. On the connector's thread it
    raises SystemExit there, not in the main thread: from a maintenance refill it ended the
    connector silently, and the pool never connected or ran maintenance again (every
    waiter timed out, for good). The connector must outlive a callback that raises it."""
    calls: list[float] = []

    def refuse(*_args: object, **_kwargs: object) -> None:
        raise psycopg2.OperationalError("connection refused (on purpose)")

    def gave_up(pool: pgpool.AbstractConnectionPool) -> None:
        calls.append(time.monotonic())
        sys.exit("the application gives up")

    pool = pgpool.ThreadedConnectionPool(
        1, 1, "", connector=refuse, open=False, maintenance_interval=0.02,
        reconnect_timeout=0.05, reconnect_failed=gave_up,
    )  # fmt: skip
    try:
        pool.open()
        wait_for(lambda: len(calls) >= 2, timeout=10, what="reconnect_failed called again")
        assert pool._connector is not None and pool._connector.alive
    finally:
        pool.closeall()


def test_a_failing_streak_is_reported_once_per_reconnect_timeout() -> None:
    """The rule itself, on a clock the test sets: a run of failed connects is reported when
    it has lasted `reconnect_timeout`, then counted anew. A success ends it, and so does a
    pause in the retries (nothing needed a connection): two blips an hour apart are not
    an hour-long outage."""
    options = pgpool.PoolOptions(minconn=0, maxconn=2, reconnect_timeout=10.0)
    state = PoolState(options)

    def fail(now: float) -> bool:
        assert state.reserve_connect(now, can_wait=False)  # as a caller's connect starts
        return state.connect_failed(psycopg2.OperationalError("refused"), now, 1.0)

    def every_second(start: float, end: float) -> list[float]:
        """When the retries ran, and which failures were reported."""
        return [t for t in range(int(start), int(end) + 1) if fail(float(t))]

    # Retries every second (the back-off is capped at 2 s): reported at 10 s, then at 20 s.
    assert every_second(0, 25) == [10.0, 20.0]
    # A success ends the run: the next one is counted from its own first failure.
    assert state.reserve_connect(26.0, can_wait=False)
    slot = Slot(conn=None, created_at=26, expires_at=99, defaults=(), encoding="UTF8", last_used=26)
    assert state.connected_idle(slot, 26.0, Reservation(left=1))
    assert every_second(30, 41) == [40.0]
    # Nothing retried from 41 s to 3600 s: the failure then starts a new run.
    assert every_second(3600, 3615) == [3610.0]
    # A connect still in flight when the pool is closed reports nothing when it fails,
    # even the one that would have completed reconnect_timeout.
    assert every_second(3616, 3619) == []
    assert state.reserve_connect(3620.0, can_wait=False)
    state.close(pgpool.PoolClosed("closed"))
    assert not state.connect_failed(psycopg2.OperationalError("refused"), 3620.0, 1.0)


def test_check_drops_dead_idle_connections_and_refills(dsn: str) -> None:
    app = unique_app("check")
    pool = pgpool.ThreadedConnectionPool(
        3, 4, pool_dsn(dsn, app), maintenance_interval=None, health_check_after=60
    )
    try:
        assert pool.check() == 0
        assert kill_backends(dsn, app) == 3
        assert pool.check() == 3  # found dead, closed, and replaced
        stats = pool.stats()
        assert (stats.idle, stats.failed_checks) == (3, 3)
        _sessions_match(pool, dsn, app)
        with pool.connection() as conn:  # the replacements work
            assert conn.cursor() is not None
    finally:
        pool.closeall()


def test_check_is_not_a_use(dsn: str) -> None:
    """check() put each connection it pinged back as if just used: a health probe calling
    it more often than max_idle kept the pool at its peak size for ever. Pinged, each
    keeps its last use and its place in the idle stack, and is reaped on time."""
    clock = FakeClock()
    pool = pgpool.ThreadedConnectionPool(
        0, 4, dsn, clock=clock, max_idle=1.0, maintenance_interval=None, timeout=0
    )  # timeout 0: a wait on the FakeClock would never end
    try:
        conns = [pool.getconn() for _ in range(4)]
        for conn in conns:
            pool.putconn(conn)
            clock.advance(0.01)
        for _ in range(3):
            clock.advance(0.5)
            assert pool.check() == 0
            pool._state.check_invariants()  # the idle stack is still ordered by last use
        assert [slot.conn for slot in pool._state.idle] == conns  # each in its place
        pool.maintain()
        s = pool.stats()
        assert (s.idle, s.idle_reaped) == (0, 4)
    finally:
        pool.closeall()


def test_resize_shrinks_at_once_and_as_connections_come_back(dsn: str) -> None:
    app = unique_app("resize")
    pool = pgpool.ThreadedConnectionPool(
        1, 5, pool_dsn(dsn, app), maintenance_interval=None, timeout=10
    )
    try:
        held = [pool.getconn() for _ in range(4)]
        pool.putconn(held.pop())  # 3 checked out, 1 idle
        pool.resize(1, 2)
        stats = pool.stats()
        assert (stats.minconn, stats.maxconn, stats.idle, stats.in_use) == (1, 2, 0, 3)
        _sessions_match(pool, dsn, app)
        pool.putconn(held.pop(0))  # the first to come back is closed: the pool is over
        assert pool.stats().size == 2
        pool.putconn(held.pop(0))  # now it fits: kept
        assert pool.stats().size == 2 and pool.stats().idle == 1
        _sessions_match(pool, dsn, app)
        pool.putconn(held.pop())
        both = [pool.getconn(), pool.getconn()]
        with pytest.raises(pgpool.PoolTimeout):
            pool.getconn(timeout=0.2)  # never more than the new maxconn
        assert pool.stats().size == 2
        for conn in both:
            pool.putconn(conn)
        with pytest.raises(ValueError, match="minconn"):
            pool.resize(3, 2)  # bad sizes change nothing
        assert (pool.minconn, pool.maxconn) == (1, 2)
    finally:
        pool.closeall()


def test_resize_closes_a_connect_already_under_way(dsn: str) -> None:
    """A connect the connector began before resize() lowered maxconn used to land on the
    idle stack and go to a waiter: after resize(0, 1), two connections were checked out
    at once and check_invariants failed. It is closed as it arrives."""
    gate = threading.Event()
    gate.set()

    def gated_connect(*args: object, **kwargs: object) -> object:
        assert gate.wait(10), "the test never opened the gate"
        return psycopg2.connect(*args, **kwargs)

    app = unique_app("shrink-connecting")
    pool = pgpool.ThreadedConnectionPool(
        0, 3, pool_dsn(dsn, app), connector=gated_connect, maintenance_interval=None, timeout=10
    )
    try:
        held = pool.getconn()
        gate.clear()
        _thread, waiting = in_thread(lambda: pool.getconn(timeout=10))
        wait_for(lambda: pool.stats().connecting == 1, what="the connector connecting")
        pool.resize(0, 1)
        assert pool.stats().size == 2  # the connect in flight is still counted
        gate.set()
        wait_for(lambda: pool.stats().connecting == 0, what="the connect to land")
        pool._state.check_invariants()
        stats = pool.stats()
        assert (stats.size, stats.in_use, stats.idle, stats.waiting) == (1, 1, 0, 1)
        pool.putconn(held)  # the pool fits: kept, and handed to the waiter
        assert waiting.done.wait(10) and waiting.result is held
        pool.putconn(held)
        _sessions_match(pool, dsn, app)
    finally:
        gate.set()
        pool.closeall()


def test_resize_closes_a_return_being_cleaned(dsn: str) -> None:
    """A return that had passed its checks (being cleaned: here, in the reset callback)
    when resize() lowered maxconn went back on the idle stack: the pool stayed over
    maxconn, and handed it out next to the connection still checked out."""
    in_reset, let_go = threading.Event(), threading.Event()

    def slow_reset(conn: object) -> None:
        in_reset.set()
        assert let_go.wait(10), "the test never let the reset finish"

    app = unique_app("shrink-returning")
    pool = pgpool.ThreadedConnectionPool(
        0, 2, pool_dsn(dsn, app), reset=slow_reset, maintenance_interval=None, timeout=10
    )
    try:
        first, second = pool.getconn(), pool.getconn()
        _thread, returning = in_thread(lambda: pool.putconn(first))
        assert in_reset.wait(10)
        pool.resize(0, 1)
        let_go.set()
        assert returning.done.wait(10) and returning.error is None
        pool._state.check_invariants()
        assert first.closed and pool.stats().size == 1
        with pytest.raises(pgpool.PoolTimeout):
            pool.getconn(timeout=0)  # `second` is out: nothing more to hand out
        pool.putconn(second)
        assert pool.stats().idle == 1 and not second.closed
        _sessions_match(pool, dsn, app)
    finally:
        let_go.set()
        pool.closeall()


def test_a_waiter_interrupted_after_a_shrink_returns_its_connection_the_long_way() -> None:
    """A waiter handed a connection before resize() lowered maxconn, then interrupted before
    it returned (a signal handler raised): what it gives back must go through the return
    that can close it, not straight onto the idle stack of a pool still over maxconn."""
    state = PoolState(pgpool.PoolOptions(minconn=0, maxconn=2))
    now = 1000.0
    slots = []
    for _ in range(2):
        assert state.reserve_connect(now, can_wait=False)
        slots.append(Slot(object(), now, 9999.0, (), "UTF8", last_used=now))
        assert state.connected(slots[-1], None, now)
    waiter = Waiter(None, now, now + 10)
    state.enqueue(waiter)
    assert state.give_back(slots[0], now) is waiter and waiter.slot is slots[0]
    state.resize(pgpool.PoolOptions(minconn=0, maxconn=1), now)
    assert state.shrinking
    aside = state.abandon(waiter, now)
    assert aside is slots[0] and not state.idle  # parked in `returning`, not kept idle
    assert not state.end_return(aside, now, keep=True)  # closed: the pool now fits
    assert (state.size, state.shrinking) == (1, False)
    state.check_invariants()


class _Interrupted(Exception):
    pass


def test_a_getconn_interrupted_after_a_shrink_closes_what_it_was_handed(dsn: str) -> None:
    """The same through the pool: the waiting caller is served, resize() lowers maxconn,
    and an exception (a signal handler's, say) ends the caller's getconn before it returns.
    The connection it was handed is cleaned and closed, not kept over maxconn."""
    app = unique_app("shrink-interrupted")
    pool = pgpool.ThreadedConnectionPool(
        0, 2, pool_dsn(dsn, app), maintenance_interval=None, timeout=10
    )
    real_sleep = Waiter.sleep

    def sleep_then_interrupt(waiter: Waiter, timeout: float | None) -> None:
        real_sleep(waiter, timeout)
        if waiter.slot is not None:  # served: now the shrink, then the interrupt
            pool.resize(0, 1)
            raise _Interrupted

    try:
        first, second = pool.getconn(), pool.getconn()
        _thread, giving = in_thread(
            lambda: wait_for(lambda: pool.stats().waiting == 1) or pool.putconn(first)
        )
        with mock.patch.object(Waiter, "sleep", sleep_then_interrupt), pytest.raises(_Interrupted):
            pool.getconn()
        assert giving.done.wait(10) and giving.error is None
        assert first.closed
        stats = pool.stats()
        assert (stats.size, stats.in_use, stats.idle) == (1, 1, 0)
        pool._state.check_invariants()
        pool.putconn(second)
        _sessions_match(pool, dsn, app)
    finally:
        pool.closeall()


def test_a_grow_after_a_shrink_keeps_what_the_shrink_would_have_closed(dsn: str) -> None:
    """A shrink marked the checked-out connections to close on return, and a grow right
    after did not unmark them: 4 of 5 were still closed as they came back."""
    app = unique_app("shrink-grow")
    pool = pgpool.ThreadedConnectionPool(
        0, 5, pool_dsn(dsn, app), maintenance_interval=None, timeout=10
    )
    try:
        held = [pool.getconn() for _ in range(5)]
        pool.resize(0, 1)
        pool.resize(0, 5)
        for conn in held:
            pool.putconn(conn)
        stats = pool.stats()
        assert (stats.idle, stats.connections_closed) == (5, 0)
        pool._state.check_invariants()
    finally:
        pool.closeall()


def test_resize_grows_and_serves_waiters(dsn: str) -> None:
    app = unique_app("grow")
    pool = pgpool.ThreadedConnectionPool(
        0, 1, pool_dsn(dsn, app), maintenance_interval=None, timeout=10
    )
    try:
        first = pool.getconn()
        _thread, waiting = in_thread(lambda: pool.getconn(timeout=15))
        wait_for(lambda: pool.stats().waiting == 1, what="a waiter")
        pool.resize(2, 3)
        assert waiting.done.wait(15) and waiting.error is None
        assert pool.stats().size >= 2 and pool.minconn == 2
        pool.putconn(first)
        pool.putconn(waiting.result)
        _sessions_match(pool, dsn, app)
    finally:
        pool.closeall()


def test_growing_serves_the_callers_already_waiting(dsn: str) -> None:
    """Where people resize: callers queue at a full pool, nothing comes back, and maxconn
    goes up. The connector must be told at once (resize dispatches): with minconn left at
    0 no refill would serve them, and they would wait out their deadline."""
    app = unique_app("grow-waiters")
    pool = pgpool.ThreadedConnectionPool(
        0, 2, pool_dsn(dsn, app), maintenance_interval=None, timeout=10
    )
    try:
        held = [pool.getconn(), pool.getconn()]
        waiters = [in_thread(lambda: pool.getconn(timeout=5))[1] for _ in range(6)]
        wait_for(lambda: pool.stats().waiting == 6, what="six callers waiting")
        pool.resize(0, 8)
        for waiting in waiters:
            assert waiting.done.wait(10) and waiting.error is None, waiting.error
        served = [waiting.result for waiting in waiters]
        assert len({id(conn) for conn in [*held, *served]}) == 8
        stats = pool.stats()
        assert (stats.minconn, stats.size, stats.in_use, stats.waiting) == (0, 8, 8, 0)
        for conn in [*held, *served]:
            pool.putconn(conn)
        _sessions_match(pool, dsn, app)
    finally:
        pool.closeall()


def test_closeall_with_a_timeout_drains(dsn: str) -> None:
    app = unique_app("drain")
    pool = pgpool.ThreadedConnectionPool(1, 3, pool_dsn(dsn, app), timeout=10)
    returned, forgotten = pool.getconn(), pool.getconn()
    third = pool.getconn()
    _waiter, waiting = in_thread(lambda: pool.getconn())
    wait_for(lambda: pool.stats().waiting == 1, what="a waiter")

    def give_back_soon() -> None:
        time.sleep(0.2)
        pool.putconn(returned)  # during the drain: closed as it comes back
        pool.putconn(third)

    giver = threading.Thread(target=give_back_soon)
    giver.start()
    started = time.monotonic()
    pool.closeall(timeout=1.0)
    giver.join()
    assert waiting.done.wait(5) and isinstance(waiting.error, pgpool.PoolClosed)
    assert time.monotonic() - started >= 0.2  # it waited for the borrower
    assert returned.closed and forgotten.closed and third.closed
    with pytest.raises(pgpool.PoolClosed):
        pool.getconn()
    wait_for(lambda: count_backends(dsn, app) == 0, what="no session after the drain")


@pytest.mark.timeout(60)
def test_closeall_with_a_timeout_stops_a_borrower_busy_in_a_long_query(dsn: str) -> None:
    """At the drain's deadline closeall() closed a busy borrower's connection with close(),
    which waits for the running query: closeall(timeout=1.0) returned after 7.7 s, and here
    would wait out the whole 30 s sleep. It now stops the connection as a max_lease reclaim
    does: the server cancels the query, the socket is cut, then it is closed."""
    app = unique_app("drain-busy")
    pool = pgpool.ThreadedConnectionPool(0, 2, pool_dsn(dsn, app))
    conn = pool.getconn()
    _thread, busy = in_thread(lambda: scalar(conn, "SELECT pg_sleep(30)"))
    active = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = %s"

    def running() -> bool:
        return run_sql(dsn, active, (app, "active")) == [(1,)]

    wait_for(running, what="the borrower's query running")
    started = time.monotonic()
    pool.closeall(timeout=1.0)
    elapsed = time.monotonic() - started
    assert elapsed < 10, f"closeall(timeout=1.0) took {elapsed:.1f} s: it waited for the query"
    assert busy.done.wait(10) and isinstance(busy.error, psycopg2.DatabaseError), busy
    assert conn.closed
    # Cancelled on the server too, not only cut off: the backend ends now, not in 30 s.
    wait_for(lambda: count_backends(dsn, app) == 0, 10, "the busy backend ended")


def test_health_check_after_zero_pings_every_checkout(dsn: str) -> None:
    """The pre-ping SQLAlchemy users know as pool_pre_ping: a dead idle connection is never
    handed out, however recently it was used."""
    app = unique_app("preping")
    pool = pgpool.ThreadedConnectionPool(
        1, 1, pool_dsn(dsn, app), health_check_after=0, maintenance_interval=None, timeout=10
    )
    try:
        conn = pool.getconn()
        pool.putconn(conn)
        kill_backends(dsn, app)
        fresh = pool.getconn()  # pinged, found dead, replaced: no error reaches the caller
        with fresh.cursor() as cur:
            cur.execute("SELECT 1")
        assert fresh is not conn and pool.stats().failed_checks == 1
        pool.putconn(fresh)
    finally:
        pool.closeall()

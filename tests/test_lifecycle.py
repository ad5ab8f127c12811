"""A connection's life in the pool: kept idle, reused LIFO, reaped, expired, checked,
reclaimed, refilled, and cleaned on return. Against a real server.

Time is a `FakeClock` moved by hand, with `maintenance_interval=None` and explicit
`pool.maintain()` calls, so nothing depends on how fast this machine is. The only real-time
tests are the ones about the maintenance thread itself, and they only poll with a deadline.
"""

from __future__ import annotations

import gc
import logging
import select
import sys
import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.extensions as ext
import psycopg2.pool
import pytest
from support import (
    FakeClock,
    Pools,
    assert_serves_maxconn,
    backend_count,
    pools_fixture,
    select_one,
    terminate_pid,
    unique_app_name,
    wait_backends,
    wait_until,
)

import pgpool
from testbed.embedded import EmbeddedPostgres, run_sql


@pytest.fixture
def pools(dsn: str) -> Iterator[Pools]:
    yield from pools_fixture(dsn)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def app() -> str:
    return unique_app_name()


def _pids(conns: list[Any]) -> list[int]:
    return [c.info.backend_pid for c in conns]


def _query_start(dsn: str, pid: int) -> Any:
    """When the backend `pid` last started a statement (the server's view)."""
    rows = run_sql(dsn, "SELECT query_start FROM pg_stat_activity WHERE pid = %s", (pid,))
    assert rows, f"backend {pid} is gone"
    return rows[0][0]


# -- keeping and reusing -------------------------------------------------------------------


def test_returned_connections_stay_open_above_minconn(pools: Pools, dsn: str, app: str) -> None:
    pool = pools.threaded(1, 4, dsn, application_name=app)
    conns = [pool.getconn() for _ in range(4)]
    wait_backends(dsn, app, 4)
    for conn in conns:
        pool.putconn(conn)
    assert all(conn.closed == 0 for conn in conns)
    assert pool.stats().idle == 4
    assert backend_count(dsn, app) == 4
    again = [pool.getconn() for _ in range(4)]  # all four reused, none reopened
    assert {id(c) for c in again} == {id(c) for c in conns}
    assert pool.stats().connections_opened == 4
    for conn in again:
        pool.putconn(conn)


def test_psycopg2_pool_closes_returned_connections_above_minconn(
    pools: Pools, dsn: str, app: str
) -> None:
    # The churn pgpool removes (psycopg2 issues #563, #1622), shown on psycopg2.pool itself.
    pool = pools.add(psycopg2.pool.ThreadedConnectionPool(1, 4, dsn, application_name=app))
    conns = [pool.getconn() for _ in range(4)]
    for conn in conns:
        pool.putconn(conn)
    assert [conn.closed for conn in conns] == [0, 1, 1, 1]
    wait_backends(dsn, app, 1)


def test_idle_connections_are_reused_lifo(pools: Pools) -> None:
    pool = pools.threaded(0, 3)
    a, b, c = pool.getconn(), pool.getconn(), pool.getconn()
    for conn in (a, b, c):
        pool.putconn(conn)
    assert pool.getconn() is c  # the hottest: returned last
    assert pool.getconn() is b
    pool.putconn(b)
    assert pool.getconn() is b
    assert pool.getconn() is a


# -- reaping idle connections ------------------------------------------------------------------


def test_idle_above_minconn_reaped_after_max_idle(
    pools: Pools, dsn: str, app: str, clock: FakeClock
) -> None:
    pool = pools.threaded(1, 4, dsn, application_name=app, max_idle=10, clock=clock)
    conns = [pool.getconn() for _ in range(4)]
    for conn in conns:
        pool.putconn(conn)
    clock.advance(9.9)
    pool.maintain()
    assert pool.stats().idle == 4  # not yet
    clock.advance(0.2)
    pool.maintain()
    s = pool.stats()
    assert (s.idle, s.idle_reaped, s.connections_closed) == (1, 3, 3)
    # The coldest went; the hottest (returned last) stays.
    assert [c.closed != 0 for c in conns] == [True, True, True, False]
    wait_backends(dsn, app, 1)
    assert pool.getconn() is conns[3]
    pool.putconn(conns[3])


def test_notifies_to_a_listening_idle_connection_do_not_keep_it_from_being_reaped(
    pools: Pools, dsn: str, clock: FakeClock
) -> None:
    """A NOTIFY makes an idle LISTENing connection's socket readable, so maintenance's idle
    probe pings it. The probe put it back as if just used: a channel notified more often
    than max_idle kept the connection from ever being reaped. A check is not a use."""
    pool = pools.threaded(0, 2, max_idle=1.0, clock=clock)
    conn = pool.getconn()
    with conn.cursor() as cursor:
        cursor.execute("LISTEN pgpool_probe")
    conn.commit()
    pool.putconn(conn)
    for _ in range(2):
        clock.advance(0.6)
        run_sql(dsn, "NOTIFY pgpool_probe")
        assert select.select([conn], [], [], 10)[0], "the NOTIFY never arrived"
        pool.maintain()  # probes it (pings: psycopg2 reads the notification), then reaps
    assert conn.notifies, "the probe never pinged the connection"
    s = pool.stats()
    assert (s.idle, s.idle_reaped) == (0, 1)  # idle 1.2 s since its last use
    assert conn.closed


def test_only_connections_idle_longer_than_max_idle_are_reaped(
    pools: Pools, clock: FakeClock
) -> None:
    pool = pools.threaded(0, 3, max_idle=10, clock=clock)
    a, b, c = pool.getconn(), pool.getconn(), pool.getconn()
    pool.putconn(a)
    clock.advance(6)
    pool.putconn(b)
    clock.advance(6)  # a idle 12 s, b idle 6 s, c checked out
    pool.maintain()
    assert a.closed and not b.closed and not c.closed
    s = pool.stats()
    assert (s.idle, s.in_use, s.idle_reaped) == (1, 1, 1)
    clock.advance(6)
    pool.maintain()
    assert b.closed and not c.closed  # a checked-out connection is never reaped
    pool.putconn(c)
    assert pool.stats().idle == 1


def test_never_reaped_below_minconn(pools: Pools, clock: FakeClock) -> None:
    pool = pools.threaded(2, 4, max_idle=1, clock=clock)
    conns = [pool.getconn() for _ in range(4)]
    for conn in conns:
        pool.putconn(conn)
    clock.advance(1000)
    pool.maintain()
    pool.maintain()
    s = pool.stats()
    assert (s.idle, s.idle_reaped, s.size) == (2, 2, 2)
    clock.advance(1000)
    pool.maintain()
    assert pool.stats().idle == 2


def test_checked_out_connections_count_towards_minconn(pools: Pools, clock: FakeClock) -> None:
    pool = pools.threaded(2, 4, max_idle=1, clock=clock)
    conns = [pool.getconn() for _ in range(4)]
    pool.putconn(conns[0])
    pool.putconn(conns[1])
    clock.advance(100)
    pool.maintain()  # 2 in use already make minconn: both idle ones may go
    s = pool.stats()
    assert (s.idle, s.in_use, s.size) == (0, 2, 2)
    pool.putconn(conns[2])
    pool.putconn(conns[3])


# -- refilling -------------------------------------------------------------------------------


def test_refills_to_minconn_after_losing_connections(
    pools: Pools, dsn: str, app: str, clock: FakeClock
) -> None:
    pool = pools.threaded(2, 4, dsn, application_name=app, clock=clock)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a, close=True)
    b.close()
    pool.putconn(b)
    s = pool.stats()
    assert (s.size, s.connections_closed, s.broken_returns) == (0, 2, 1)
    pool.maintain()
    s = pool.stats()
    assert (s.idle, s.size, s.connections_opened) == (2, 2, 4)
    wait_backends(dsn, app, 2)
    assert_serves_maxconn(pool)


def test_failed_refill_backs_off_then_retries(
    pools: Pools, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    down = [False]

    def connector(*args: Any, **kwargs: Any) -> Any:
        if down[0]:
            raise psycopg2.OperationalError("the server is down")
        return psycopg2.connect(*args, **kwargs)

    pool = pools.threaded(2, 2, clock=clock, connector=connector, name="refill")
    conns = [pool.getconn(), pool.getconn()]
    for conn in conns:
        pool.putconn(conn, close=True)
    down[0] = True
    with caplog.at_level(logging.WARNING, logger="pgpool"):
        pool.maintain()
    assert "the server is down" in caplog.text
    s = pool.stats()
    assert (s.size, s.connecting, s.connect_errors) == (0, 0, 1)  # reservations released
    down[0] = False
    pool.maintain()  # still within the back-off: no attempt
    assert pool.stats().connections_opened == 2
    clock.advance(60)  # past any back-off
    pool.maintain()
    s = pool.stats()
    assert (s.idle, s.connecting, s.connections_opened) == (2, 0, 4)
    assert_serves_maxconn(pool)


def test_refill_does_not_exceed_maxconn_or_open_when_busy(pools: Pools, clock: FakeClock) -> None:
    pool = pools.threaded(2, 2, clock=clock)
    conns = [pool.getconn(), pool.getconn()]
    pool.maintain()
    s = pool.stats()
    assert (s.idle, s.in_use, s.connections_opened) == (0, 2, 2)
    for conn in conns:
        pool.putconn(conn)


# -- max_lifetime --------------------------------------------------------------------------


def test_expired_idle_connections_closed_by_maintain_and_replaced(
    pools: Pools, clock: FakeClock
) -> None:
    pool = pools.threaded(2, 3, max_lifetime=100, clock=clock)
    first = [pool.getconn(), pool.getconn()]
    for conn in first:
        pool.putconn(conn)
    clock.advance(94)
    pool.maintain()
    assert pool.stats().expired == 0  # lifetimes are at least 95% of max_lifetime
    clock.advance(6.01)
    pool.maintain()
    assert all(conn.closed for conn in first)
    s = pool.stats()
    assert (s.expired, s.idle, s.connections_opened) == (2, 2, 4)  # refilled at once
    fresh = [pool.getconn(), pool.getconn()]
    assert not {id(c) for c in fresh} & {id(c) for c in first}
    for conn in fresh:
        pool.putconn(conn)


def test_connection_expired_on_return_is_closed(pools: Pools, clock: FakeClock) -> None:
    pool = pools.threaded(0, 2, max_lifetime=100, clock=clock)
    conn = pool.getconn()
    clock.advance(101)
    pool.putconn(conn)
    assert conn.closed
    s = pool.stats()
    assert (s.expired, s.idle, s.in_use, s.size, s.broken_returns) == (1, 0, 0, 0, 0)


def test_expired_idle_connection_is_not_handed_out(pools: Pools, clock: FakeClock) -> None:
    pool = pools.threaded(0, 2, max_lifetime=100, clock=clock)
    old = pool.getconn()
    pool.putconn(old)
    clock.advance(101)
    new = pool.getconn()  # no maintain() in between: getconn itself refuses the old one
    assert new is not old
    assert old.closed
    assert select_one(new) == 1
    assert pool.stats().expired == 1
    pool.putconn(new)


def test_connection_never_closed_while_checked_out(pools: Pools, clock: FakeClock) -> None:
    pool = pools.threaded(1, 2, max_lifetime=10, max_idle=10, clock=clock)
    conn = pool.getconn()
    for _ in range(5):
        clock.advance(1000)
        pool.maintain()
        assert conn.closed == 0
        assert select_one(conn) == 1
    conn.rollback()
    assert pool.stats().in_use >= 1
    pool.putconn(conn)  # now it goes
    assert conn.closed


def test_lifetime_jitter_stays_within_95_to_100_percent(pools: Pools, clock: FakeClock) -> None:
    n = 20
    pool = pools.threaded(n, n, max_lifetime=100, clock=clock)
    clock.advance(94.999)
    pool.maintain()
    assert pool.stats().expired == 0
    clock.advance(2.5)  # 97.5 s: about half have expired (all or none: p = 2e-6)
    pool.maintain()
    assert 0 < pool.stats().expired < n
    clock.advance(2.501)  # 100 s
    pool.maintain()
    assert pool.stats().expired == n
    # Each pass refills within the connect budget (max_connecting); fresh connections get
    # fresh lifetimes, so no further expiry happens while the pool refills.
    for _ in range(n):
        pool.maintain()
    s = pool.stats()
    assert (s.idle, s.expired) == (n, n)


# -- health check on checkout --------------------------------------------------------------------


def test_dead_idle_connection_replaced_transparently(
    pools: Pools, dsn: str, clock: FakeClock
) -> None:
    pool = pools.threaded(1, 1, health_check_after=5, clock=clock)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    terminate_pid(dsn, pid)
    clock.advance(6)  # idle longer than health_check_after: checked before reuse
    fresh = pool.getconn()
    assert fresh is not conn
    assert fresh.info.backend_pid != pid
    assert select_one(fresh) == 1
    assert conn.closed
    s = pool.stats()
    assert (s.failed_checks, s.connections_opened, s.connections_closed) == (1, 2, 1)
    pool.putconn(fresh)


def test_dead_idle_connection_replaced_with_a_key(pools: Pools, dsn: str, clock: FakeClock) -> None:
    pool = pools.threaded(1, 1, health_check_after=5, clock=clock)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    pool.putconn(conn)
    terminate_pid(dsn, pid)
    clock.advance(6)
    fresh = pool.getconn("k", timeout=0)  # (on the FakeClock, a wait would never end)
    assert select_one(fresh) == 1
    assert pool.getconn("k") is fresh
    pool.putconn(fresh, "k")


def test_idle_connection_is_pinged_after_health_check_after(
    pools: Pools, dsn: str, clock: FakeClock
) -> None:
    pool = pools.threaded(1, 1, health_check_after=5, clock=clock)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    assert select_one(conn) == 1
    conn.rollback()
    pool.putconn(conn)
    before = _query_start(dsn, pid)
    clock.advance(6)
    assert pool.getconn() is conn
    assert _query_start(dsn, pid) > before  # a statement ran: the health check
    pool.putconn(conn)


def test_no_ping_under_steady_use(pools: Pools, dsn: str, clock: FakeClock) -> None:
    pool = pools.threaded(1, 1, health_check_after=5, clock=clock)
    conn = pool.getconn()
    pid = conn.info.backend_pid
    assert select_one(conn) == 1
    conn.rollback()
    pool.putconn(conn)
    before = _query_start(dsn, pid)
    for _ in range(20):
        clock.advance(1)  # each checkout within 5 s of the last return
        assert pool.getconn() is conn
        pool.putconn(conn)
    assert _query_start(dsn, pid) == before  # not a single statement reached the server
    assert pool.stats().failed_checks == 0


def test_recently_used_dead_connection_is_discarded_on_return(
    pools: Pools, dsn: str, clock: FakeClock
) -> None:
    # The flip side of skipping the check under steady use: a connection that died moments
    # ago is handed out. Its user sees the driver's error; returning it discards it.
    pool = pools.threaded(1, 1, health_check_after=5, clock=clock)
    conn = pool.getconn()
    pool.putconn(conn)
    terminate_pid(dsn, conn.info.backend_pid)
    assert pool.getconn() is conn
    with pytest.raises(psycopg2.OperationalError):
        select_one(conn)
    pool.putconn(conn)
    s = pool.stats()
    assert (s.broken_returns, s.size) == (1, 0)
    fresh = pool.getconn()
    assert select_one(fresh) == 1
    pool.putconn(fresh)


# -- max_lease -----------------------------------------------------------------------------


def test_forgotten_connection_reclaimed_with_a_warning(
    pools: Pools, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    pool = pools.threaded(0, 2, name="leaky", max_lease=60, clock=clock)
    forgotten = pool.getconn()
    returned = pool.getconn()
    pool.putconn(returned)
    clock.advance(59)
    pool.maintain()
    assert pool.stats().leases_reclaimed == 0
    clock.advance(2)
    with caplog.at_level(logging.WARNING, logger="pgpool"):
        pool.maintain()
    assert forgotten.closed
    assert not returned.closed
    s = pool.stats()
    assert (s.leases_reclaimed, s.in_use, s.idle) == (1, 0, 1)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "'leaky'" in warnings[0].getMessage()
    assert "max_lease=60" in warnings[0].getMessage()
    # Returning it later is harmless, and changes nothing.
    pool.putconn(forgotten)
    assert pool.stats() == s
    assert_serves_maxconn(pool)


def _lease_warning(pool: pgpool.AbstractConnectionPool, caplog: pytest.LogCaptureFixture) -> str:
    with caplog.at_level(logging.WARNING, logger="pgpool"):
        pool.maintain()
    (record,) = [r for r in caplog.records if "reclaiming" in r.getMessage()]
    return record.getMessage()


def test_reclaim_warning_names_the_getconn_caller(
    pools: Pools, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    pool = pools.threaded(0, 2, max_lease=60, clock=clock)
    line = sys._getframe().f_lineno + 1
    pool.getconn()
    clock.advance(61)
    text = _lease_warning(pool, caplog)
    caller = "test_reclaim_warning_names_the_getconn_caller"
    assert f'File "{__file__}", line {line}, in {caller}' in text


def test_reclaim_warning_names_the_with_statement(
    pools: Pools, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    pool = pools.threaded(0, 1, max_lease=60, clock=clock)
    line = sys._getframe().f_lineno + 1
    with pool.connection():
        clock.advance(61)
        text = _lease_warning(pool, caplog)
    assert f'File "{__file__}", line {line}' in text
    assert pool.stats().in_use == 0  # the with block's own return was harmless


def test_reclaimed_keyed_connection_frees_its_key(pools: Pools, clock: FakeClock) -> None:
    pool = pools.threaded(0, 1, max_lease=60, clock=clock)
    forgotten = pool.getconn("job")
    clock.advance(61)
    pool.maintain()
    fresh = pool.getconn("job", timeout=0)  # (on the FakeClock, a wait would never end)
    assert fresh is not forgotten
    assert select_one(fresh) == 1
    pool.putconn(forgotten, "job")  # harmless
    pool.putconn(fresh, "job")
    assert pool.stats().in_use == 0


def test_no_reclaim_without_max_lease(pools: Pools, clock: FakeClock) -> None:
    pool = pools.threaded(0, 1, clock=clock)
    conn = pool.getconn()
    clock.advance(10**6)
    pool.maintain()
    assert conn.closed == 0
    assert pool.stats().leases_reclaimed == 0
    pool.putconn(conn)


# -- the maintenance thread (real time) --------------------------------------------------------


def _connector_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"pgpool-connector-{name}"]


def test_maintenance_thread_reaps_without_any_call(pools: Pools, dsn: str, app: str) -> None:
    pool = pools.threaded(1, 3, dsn, application_name=app, max_idle=0.05, maintenance_interval=0.02)
    conns = [pool.getconn() for _ in range(3)]
    for conn in conns:
        pool.putconn(conn)
    wait_until(lambda: pool.stats().idle == 1, "the maintenance thread reaping to minconn")
    assert pool.stats().idle_reaped == 2
    wait_backends(dsn, app, 1)


def test_maintenance_thread_refills_minconn(pools: Pools) -> None:
    pool = pools.threaded(2, 3, maintenance_interval=0.02)
    conns = [pool.getconn(), pool.getconn()]
    for conn in conns:
        pool.putconn(conn, close=True)
    wait_until(lambda: pool.stats().idle == 2, "the maintenance thread refilling to minconn")


def test_maintenance_thread_ends_when_the_pool_is_collected(dsn: str) -> None:
    name = unique_app_name("gc-pool")
    pool = pgpool.ThreadedConnectionPool(0, 2, dsn, name=name, maintenance_interval=0.01)
    (thread,) = _connector_threads(name)
    assert thread.is_alive()
    del pool
    gc.collect()
    thread.join(10)  # a deadline: the thread must notice the pool is gone
    assert not thread.is_alive()


def test_closeall_stops_the_maintenance_thread_promptly(dsn: str) -> None:
    name = unique_app_name("stop-pool")
    pool = pgpool.ThreadedConnectionPool(1, 2, dsn, name=name, maintenance_interval=3600)
    (thread,) = _connector_threads(name)
    pool.closeall()
    thread.join(10)  # far less than the hour it would otherwise sleep
    assert not thread.is_alive()


def test_no_maintenance_pass_when_interval_is_none(pools: Pools) -> None:
    # The connector thread still opens connections for waiters, but runs no maintenance.
    pool = pools.threaded(0, 1, name=unique_app_name("quiet"), maintenance_interval=None)
    calls: list[int] = []
    pool.maintain = lambda: calls.append(1)  # type: ignore[method-assign]
    conn = pool.getconn(timeout=10)  # opened by the connector, in one of its rounds
    pool.putconn(conn)
    assert len(_connector_threads(pool.name)) == 1
    assert calls == []


# -- cleaning on return --------------------------------------------------------------------------


def test_open_transaction_rolled_back_on_return(pools: Pools, dsn: str) -> None:
    pool = pools.threaded(0, 1)
    conn = pool.getconn()
    with conn.cursor() as cursor:
        cursor.execute("CREATE TABLE lifecycle_rollback (x int)")
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    assert again.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
    rows = run_sql(dsn, "SELECT to_regclass('lifecycle_rollback') IS NULL")
    assert rows == [(True,)]  # never committed
    pool.putconn(again)


def test_failed_transaction_rolled_back_on_return(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    conn = pool.getconn()
    with pytest.raises(psycopg2.errors.DivisionByZero), conn.cursor() as cursor:
        cursor.execute("SELECT 1 / 0")
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INERROR
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    assert select_one(again) == 1
    pool.putconn(again)
    assert pool.stats().broken_returns == 0


def _next_borrower_gets_a_transaction(pool: pgpool.AbstractConnectionPool, conn: Any) -> None:
    """The connection comes back clean: psycopg2 sends BEGIN before the next statement (so
    the borrower's work is not autocommitted), and rollback() works."""
    again = pool.getconn()
    assert again is conn and again.status == ext.STATUS_READY
    with again.cursor() as cursor:
        cursor.execute("SELECT 1")
    assert again.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS  # BEGIN was sent
    again.rollback()
    pool.putconn(again)


def test_a_failed_two_phase_prepare_is_cleaned_on_return(pools: Pools) -> None:
    """On a default server (max_prepared_transactions = 0) tpc_prepare() fails, and the
    server ends the transaction: libpq reports IDLE while psycopg2 is still in BEGIN. The
    fast path, which read libpq alone, handed it out as it was: the next borrower's
    statements went without BEGIN (autocommitted), and its rollback() raised."""
    pool = pools.threaded(0, 1)
    conn = pool.getconn()
    conn.tpc_begin(conn.xid(1, "pgpool-failed-prepare", "branch"))
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")
    with pytest.raises(psycopg2.OperationalError, match="prepared transactions are disabled"):
        conn.tpc_prepare()
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE  # libpq: idle
    assert conn.status == ext.STATUS_BEGIN  # psycopg2: still in its two-phase transaction
    pool.putconn(conn)
    _next_borrower_gets_a_transaction(pool, conn)
    assert pool.stats().broken_returns == 0  # cleaned, not discarded


def test_a_prepared_transaction_is_rolled_back_on_return(
    restartable_server: EmbeddedPostgres,
) -> None:
    """After a successful tpc_prepare() the transaction lives on the server, not in the
    session: closing the connection would leave it there, holding its locks. The return
    ends it with ROLLBACK PREPARED (needs a server with max_prepared_transactions > 0: a
    private one, so the shared server keeps the default the test above relies on)."""
    server = restartable_server
    server.execute("ALTER SYSTEM SET max_prepared_transactions = 2")
    server.restart()
    pool = pgpool.ThreadedConnectionPool(0, 1, server.dsn, maintenance_interval=None, timeout=10)
    try:
        conn = pool.getconn()
        conn.tpc_begin(conn.xid(1, "pgpool-prepared", "branch"))
        with conn.cursor() as cursor:
            cursor.execute("CREATE TABLE lifecycle_prepared (x int)")
        conn.tpc_prepare()
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE  # libpq: idle
        assert conn.status == ext.STATUS_PREPARED
        assert server.execute("SELECT count(*) FROM pg_prepared_xacts") == [(1,)]
        pool.putconn(conn)
        assert server.execute("SELECT count(*) FROM pg_prepared_xacts") == [(0,)]
        assert server.execute("SELECT to_regclass('lifecycle_prepared') IS NULL") == [(True,)]
        _next_borrower_gets_a_transaction(pool, conn)
        assert pool.stats().broken_returns == 0
    finally:
        pool.closeall()


def test_rollback_failure_discards_the_connection_and_frees_its_slot(
    pools: Pools, dsn: str
) -> None:
    # psycopg2.pool leaks the slot for good when its rollback raises; pgpool discards it.
    pool = pools.threaded(0, 1)
    conn = pool.getconn()
    assert select_one(conn) == 1
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS
    terminate_pid(dsn, conn.info.backend_pid)
    pool.putconn(conn)  # the rollback fails: no error for the caller, the connection goes
    assert conn.closed
    s = pool.stats()
    assert (s.broken_returns, s.in_use, s.size, s.connections_closed) == (1, 0, 0, 1)
    assert_serves_maxconn(pool)


def test_session_attributes_restored_on_return(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    conn = pool.getconn()
    defaults = (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)
    conn.set_session(
        isolation_level=ext.ISOLATION_LEVEL_SERIALIZABLE,
        readonly=True,
        deferrable=True,
        autocommit=True,
    )
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    assert (again.autocommit, again.isolation_level, again.readonly, again.deferrable) == defaults
    with again.cursor() as cursor:
        cursor.execute("SHOW transaction_isolation")
        assert cursor.fetchone() == ("read committed",)
        cursor.execute("SHOW transaction_read_only")
        assert cursor.fetchone() == ("off",)
    again.rollback()
    pool.putconn(again)


def test_connect_time_session_attributes_are_the_ones_restored(pools: Pools) -> None:
    # configure() may set non-default attributes: those are what the pool restores.
    def configure(conn: Any) -> None:
        conn.autocommit = True
        conn.readonly = True

    pool = pools.threaded(0, 1, configure=configure)
    conn = pool.getconn()
    assert (conn.autocommit, conn.readonly) == (True, True)
    conn.autocommit = False
    conn.readonly = False
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    assert (again.autocommit, again.readonly) == (True, True)
    pool.putconn(again)


def test_configure_called_once_per_new_connection(pools: Pools) -> None:
    configured: list[Any] = []
    pool = pools.threaded(1, 3, configure=configured.append)
    assert len(configured) == 1
    conns = [pool.getconn() for _ in range(3)]
    assert sorted(map(id, configured)) == sorted(map(id, conns))
    for conn in conns:
        pool.putconn(conn)
    for _ in range(3):
        pool.putconn(pool.getconn())
    assert len(configured) == 3


def test_configure_sql_lasts_and_leaves_the_connection_idle(pools: Pools) -> None:
    # getconn promises an idle connection (no transaction). A configure() that runs a SET
    # (as configure hooks do) must not hand the first borrower an open transaction, nor
    # have its SET undone by the rollback when that borrower returns the connection.
    def configure(conn: Any) -> None:
        with conn.cursor() as cursor:
            cursor.execute("SET search_path TO pg_catalog")

    pool = pools.threaded(0, 1, configure=configure)
    for _ in range(2):
        conn = pool.getconn()
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        with conn.cursor() as cursor:
            cursor.execute("SHOW search_path")
            assert cursor.fetchone() == ("pg_catalog",)
        conn.rollback()
        pool.putconn(conn)


def test_reset_called_on_every_return(pools: Pools) -> None:
    resets: list[Any] = []
    pool = pools.threaded(0, 2, reset=resets.append)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    pool.putconn(pool.getconn())
    assert [id(c) for c in resets] == [id(a), id(b), id(b)]
    pool.putconn(pool.getconn(), close=True)  # a connection being closed needs no reset
    assert len(resets) == 3


def test_reset_raising_discards_the_connection(pools: Pools) -> None:
    def reset(conn: Any) -> None:
        raise RuntimeError("reset failed")

    pool = pools.threaded(0, 1, reset=reset)
    conn = pool.getconn()
    pool.putconn(conn)  # the caller is not blamed for the reset's failure
    assert conn.closed
    s = pool.stats()
    assert (s.broken_returns, s.size, s.in_use) == (1, 0, 0)
    fresh = pool.getconn(timeout=0)
    assert select_one(fresh) == 1
    pool.putconn(fresh)


@pytest.mark.parametrize("reset", [pgpool.discard_all, pgpool.reset_session])
def test_reset_helpers_wipe_the_session(pools: Pools, reset: Any) -> None:
    pool = pools.threaded(0, 1, reset=reset)
    conn = pool.getconn()
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SET search_path TO pg_catalog")
        cursor.execute("CREATE TEMP TABLE scratch (x int)")
        cursor.execute("PREPARE stmt AS SELECT 1")
        cursor.execute("SELECT pg_advisory_lock(4242)")
    pool.putconn(conn)
    again = pool.getconn()
    assert again is conn
    assert again.autocommit is False  # the pool restores the attribute after the reset
    with again.cursor() as cursor:
        cursor.execute("SHOW search_path")
        assert cursor.fetchone() == ('"$user", public',)
        cursor.execute("SELECT to_regclass('pg_temp.scratch') IS NULL")
        assert cursor.fetchone() == (True,)
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        assert cursor.fetchone() == (0,)
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert cursor.fetchone() == (0,)
    again.rollback()
    pool.putconn(again)


def test_put_with_close_closes_and_frees_the_slot(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    assert conn.closed
    s = pool.stats()
    assert (s.size, s.connections_closed, s.broken_returns) == (0, 1, 0)
    assert_serves_maxconn(pool)


# -- SimpleConnectionPool: maintenance from its own calls ------------------------------------


def test_simple_pool_maintains_from_its_own_calls(pools: Pools, clock: FakeClock) -> None:
    pool = pools.simple(0, 3, max_idle=10, maintenance_interval=5, clock=clock)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    clock.advance(11)
    c = pool.getconn()  # no background thread: this call runs the overdue maintenance
    assert a.closed and b.closed
    assert pool.stats().idle_reaped == 2
    assert select_one(c) == 1
    pool.putconn(c)


def test_simple_pool_maintains_on_putconn(pools: Pools, clock: FakeClock) -> None:
    pool = pools.simple(0, 3, max_idle=10, maintenance_interval=5, clock=clock)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    clock.advance(11)
    pool.putconn(b)  # a has been idle 11 s: reaped by the maintenance this call runs
    assert a.closed and not b.closed
    s = pool.stats()
    assert (s.idle, s.idle_reaped) == (1, 1)


def test_threaded_pool_without_interval_never_maintains_by_itself(
    pools: Pools, clock: FakeClock
) -> None:
    pool = pools.threaded(0, 3, max_idle=10, clock=clock)
    a, b = pool.getconn(), pool.getconn()
    pool.putconn(a)
    pool.putconn(b)
    clock.advance(1000)
    assert pool.getconn() is b
    pool.putconn(b)
    assert pool.stats().idle_reaped == 0
    assert not a.closed
    pool.maintain()
    assert a.closed and not b.closed
    assert pool.stats().idle_reaped == 1


def test_a_failing_maintenance_pass_is_logged_and_the_thread_goes_on(
    pools: Pools, caplog: pytest.LogCaptureFixture
) -> None:
    pool = pools.threaded(0, 2, name="flaky", maintenance_interval=0.02)
    calls: list[int] = []
    real_maintain = pool.maintain

    def maintain_failing_once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("maintenance broke once")
        real_maintain()

    pool.maintain = maintain_failing_once  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger="pgpool"):
        wait_until(lambda: len(calls) >= 3, "maintenance passes after a failed one")
    assert any("'flaky': maintenance pass failed" in r.getMessage() for r in caplog.records)
    assert pool._connector is not None and pool._connector.alive
    pool.closeall()
    wait_until(lambda: not pool._connector.alive, "the thread ending after closeall")  # type: ignore[union-attr]

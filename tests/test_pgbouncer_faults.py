"""Faults between pgpool and PgBouncer, and a short chaos soak through it.

Each fault is something an operator or a crash does to PgBouncer: a restart, the admin
console's RECONNECT, PAUSE/RESUME and KILL. In each, pgpool recovers by itself: a request
that meets a broken connection fails with the driver's error (or, for one that was idle
past `health_check_after`, never sees it: the health check drops it first), a checkout
never waits past its deadline, and once PgBouncer serves again every request succeeds,
with no slot lost.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from bouncersupport import (
    MODES,
    BouncerFactory,
    Upstream,
    bouncer_factory,
    kill_server_connections,
    make_pool,
    one,
    prepare_upstream,
    requires_pgbouncer,
)
from conftest import PgServer
from faultsupport import CONNECT_TIMEOUT, SLACK, in_thread, is_dirty, wait_for

import pgpool
from testbed.embedded import run_sql
from testbed.pgbouncer import PgBouncer, PoolMode

pytestmark = requires_pgbouncer

RECOVERY = 10.0  # seconds within which requests must succeed again: a hang guard only


@pytest.fixture(scope="module")
def bouncer_upstream(pg_server: PgServer) -> Upstream:
    return prepare_upstream(pg_server)


@pytest.fixture
def make_bouncer(bouncer_upstream: Upstream) -> Iterator[BouncerFactory]:
    yield from bouncer_factory(bouncer_upstream)


def _serves(pool: Any, requests: int = 10) -> None:
    """`requests` requests in a row succeed, each served within the pool's deadline."""
    for _ in range(requests):
        with pool.connection(timeout=RECOVERY) as conn:
            assert one(conn, "SELECT 1") == 1


def _until_serving(pool: Any) -> int:
    """Run requests until one succeeds; return how many failed first (each with a clear
    error), failing the test if none succeeds within RECOVERY seconds."""
    failures = 0
    deadline = time.monotonic() + RECOVERY
    while True:
        try:
            with pool.connection(timeout=RECOVERY) as conn:
                one(conn, "SELECT 1")
            return failures
        except (psycopg2.OperationalError, psycopg2.InterfaceError, pgpool.PoolError):
            failures += 1
            assert time.monotonic() < deadline, "no request succeeded after the fault"
            time.sleep(0.05)


def _warm(pool: Any, n: int) -> None:
    conns = [pool.getconn() for _ in range(n)]
    for conn in conns:
        one(conn, "SELECT 1")
    for conn in conns:
        pool.putconn(conn)


@pytest.mark.parametrize("mode", MODES)
def test_pgbouncer_restart(make_bouncer: BouncerFactory, mode: PoolMode) -> None:
    """A restart breaks every client connection. Those idle past `health_check_after` are
    dropped by the health check, unseen; a request on one used moments before the restart
    fails once; then the pool serves from new connections."""
    bouncer = make_bouncer(mode)
    with make_pool(bouncer, 3, 3, health_check_after=0.2) as pool:
        _warm(pool, 3)
        bouncer.restart()
        failures = _until_serving(pool)
        assert failures <= 3  # at most one per connection that was open
        _serves(pool)
        time.sleep(0.3)  # the rest are now past the check window...
        _serves(pool, 5)  # ...and dropped unseen if still broken
        assert pool.stats().in_use == 0


@pytest.mark.parametrize("mode", MODES)
def test_pgbouncer_down_then_back(make_bouncer: BouncerFactory, mode: PoolMode) -> None:
    """While PgBouncer is down a checkout never hangs: within its timeout it fails with a
    PoolTimeout carrying the driver's error (connection refused), or with that error itself;
    once PgBouncer is back the pool serves again, with no slot lost."""
    bouncer = make_bouncer(mode)
    with make_pool(bouncer, 2, 2, health_check_after=0.0) as pool:
        _warm(pool, 2)
        bouncer.stop()
        started = time.monotonic()
        with (
            pytest.raises((psycopg2.OperationalError, pgpool.PoolTimeout)) as raised,
            pool.connection(timeout=2) as conn,
        ):
            one(conn, "SELECT 1")
        assert time.monotonic() - started < 2 + CONNECT_TIMEOUT + SLACK  # it ends: a hang guard
        if isinstance(raised.value, pgpool.PoolTimeout):
            assert isinstance(raised.value.__cause__, psycopg2.OperationalError)
        bouncer.start()
        assert _until_serving(pool) == 0
        conns = [pool.getconn(timeout=5) for _ in range(2)]  # both slots are there
        for conn in conns:
            pool.putconn(conn)


def _server_pid(pool: Any) -> int:
    with pool.connection() as conn:
        pid: int = one(conn, "SELECT pg_backend_pid()")
    return pid


def test_reconnect_in_transaction_mode_is_invisible(make_bouncer: BouncerFactory) -> None:
    """RECONNECT closes each server connection once released, i.e. after the current
    transaction: pgpool's client connections carry on, on new server connections."""
    bouncer = make_bouncer("transaction", default_pool_size=1)
    with make_pool(bouncer, 1, 1) as pool:
        before = _server_pid(pool)
        bouncer.admin("RECONNECT")
        wait_for(lambda: _server_pid(pool) != before, RECOVERY, "a new server connection")
        assert pool.stats().connections_opened == 1  # the same client connection all along
        assert pool.stats().broken_returns == 0


def test_reconnect_in_session_mode_waits_for_pgpool_to_let_go(
    make_bouncer: BouncerFactory,
) -> None:
    """In session mode a server connection is released only when the client disconnects:
    after RECONNECT, pgpool's connections keep their old server connections until pgpool
    closes them (here `max_lifetime`, 2 s). Nothing fails meanwhile."""
    bouncer = make_bouncer("session")
    with make_pool(bouncer, 1, 1, max_lifetime=2.0, maintenance_interval=0.1) as pool:
        before = _server_pid(pool)
        bouncer.admin("RECONNECT")
        assert _server_pid(pool) == before
        wait_for(lambda: _server_pid(pool) != before, RECOVERY, "lifetime replaced it")
        assert pool.stats().expired >= 1


def test_pause_resume_in_transaction_mode(make_bouncer: BouncerFactory) -> None:
    """PAUSE holds every new transaction in PgBouncer; RESUME releases them. A request made
    during a short pause just takes longer (its health check waits in PgBouncer, within
    the checkout's deadline), and after RESUME all is well."""
    bouncer = make_bouncer("transaction")
    with make_pool(bouncer, 2, 2, health_check_after=0.0, timeout=5.0) as pool:
        _warm(pool, 2)
        bouncer.admin("PAUSE")
        _, outcome = in_thread(lambda: _serves(pool, 1))
        assert not outcome.done.wait(0.5)  # held by PgBouncer, not failed
        bouncer.admin("RESUME")
        assert outcome.done.wait(RECOVERY)
        assert outcome.error is None
        _serves(pool)
        assert pool.stats().in_use == 0


def test_pause_in_session_mode_waits_for_pgpool_to_close(make_bouncer: BouncerFactory) -> None:
    """In session mode PAUSE completes only once every client has disconnected: a pool
    holding idle connections keeps it waiting until the pool closes them (closeall here;
    max_idle above minconn in a running app). Then RESUME lets the pool start over."""
    bouncer = make_bouncer("session")
    pool = make_pool(bouncer, 1, 2)
    try:
        _warm(pool, 1)
        _, paused = in_thread(lambda: bouncer.admin("PAUSE"))
        assert not paused.done.wait(0.5)
        pool.closeall()
        assert paused.done.wait(RECOVERY) and paused.error is None
    finally:
        if not pool.closed:
            pool.closeall()
    bouncer.admin("RESUME")
    with make_pool(bouncer, 1, 2) as pool:
        _serves(pool)


@pytest.mark.parametrize("mode", MODES)
def test_kill_then_resume(make_bouncer: BouncerFactory, mode: PoolMode) -> None:
    """KILL drops every client and server connection of the database, and PgBouncer holds
    new logins until RESUME. Meanwhile a checkout fails within libpq's connect_timeout;
    after RESUME the pool opens new connections and serves again."""
    bouncer = make_bouncer(mode)
    # No maintenance thread: the checkouts' health checks, counted below, find the dead.
    pool = make_pool(bouncer, 2, 2, health_check_after=0.0, timeout=1.0, maintenance_interval=None)
    with pool:
        _warm(pool, 2)
        bouncer.admin(f"KILL {bouncer.database}")
        started = time.monotonic()
        with (
            pytest.raises((psycopg2.OperationalError, pgpool.PoolTimeout)),
            pool.connection() as conn,
        ):
            one(conn, "SELECT 1")
        assert time.monotonic() - started < 2 * CONNECT_TIMEOUT + SLACK  # it ends: a hang guard
        bouncer.admin(f"RESUME {bouncer.database}")
        _until_serving(pool)
        _serves(pool)
        assert pool.stats().failed_checks >= 2  # both killed connections were dropped


@pytest.mark.parametrize("mode", MODES)
def test_server_side_pool_exhausted_then_freed(
    make_bouncer: BouncerFactory, mode: PoolMode
) -> None:
    """Another client holds PgBouncer's only server connection in a long transaction:
    pgpool's request waits in PgBouncer's queue (not in pgpool), and is served as soon as
    the server connection is freed, within query_wait_timeout."""
    bouncer = make_bouncer(mode, default_pool_size=1, query_wait_timeout=10)
    with make_pool(bouncer, 0, 1) as pool:
        hog = psycopg2.connect(bouncer.dsn)
        try:
            hog.cursor().execute("SELECT 1")  # a transaction left open
            if mode == "session":
                hog_done = threading.Timer(0.5, hog.close)
            else:
                hog_done = threading.Timer(0.5, hog.rollback)
            started = time.monotonic()
            hog_done.start()
            with pool.connection() as conn:
                assert one(conn, "SELECT 1") == 1
            assert time.monotonic() - started >= 0.4  # it did wait for the hog
            hog_done.join()
        finally:
            hog.close()


# -- a short chaos soak through PgBouncer ----------------------------------------------------

FAULTS = ("restart", "reconnect", "pause", "kill-servers", "kill-db")


def _inject(bouncer: PgBouncer, upstream: Upstream, fault: str) -> None:
    if fault == "restart":
        bouncer.restart()
    elif fault == "reconnect":
        bouncer.admin("RECONNECT")
    elif fault == "pause":
        bouncer.admin("PAUSE")
        time.sleep(random.uniform(0.05, 0.3))
        bouncer.admin("RESUME")
    elif fault == "kill-servers":
        kill_server_connections(upstream[2])
    else:
        bouncer.admin(f"KILL {bouncer.database}")
        time.sleep(random.uniform(0.05, 0.3))
        bouncer.admin(f"RESUME {bouncer.database}")


def test_chaos_soak_through_pgbouncer(
    make_bouncer: BouncerFactory, bouncer_upstream: Upstream
) -> None:
    """Six threads write rows through pgpool and PgBouncer (transaction mode) for a few
    seconds while faults hit PgBouncer at random. Checked: every failure is a clear error,
    no connection is handed out dirty, no thread hangs, every commit that returned is in
    the table, and afterwards the pool serves with all its slots."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    bouncer = make_bouncer("transaction", default_pool_size=3, query_wait_timeout=5)
    marker = rng.randrange(1, 2**31)
    acked: list[int] = []
    failures: dict[str, int] = {}
    dirty: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    with make_pool(bouncer, 2, 4, timeout=3.0, health_check_after=0.1) as pool:

        def worker(index: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                value = marker + index * 100_000 + n
                try:
                    conn = pool.getconn()
                except (psycopg2.OperationalError, pgpool.PoolError) as exc:
                    with lock:
                        failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                    continue
                try:
                    if (why := is_dirty(conn)) is not None:
                        dirty.append(why)
                    with conn.cursor() as cur:
                        cur.execute("INSERT INTO t VALUES (%s)", (value,))
                    conn.commit()
                    with lock:
                        acked.append(value)
                except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
                    with lock:
                        failures[type(exc).__name__] = failures.get(type(exc).__name__, 0) + 1
                finally:
                    pool.putconn(conn)

        threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(6)]
        for thread in threads:
            thread.start()
        end = time.monotonic() + 5.0
        injected = []
        while time.monotonic() < end:
            time.sleep(rng.uniform(0.2, 0.6))
            fault = rng.choice(FAULTS)
            _inject(bouncer, bouncer_upstream, fault)
            injected.append(fault)
        time.sleep(0.5)  # a fault-free tail: the pool must be serving again
        stop.set()
        for thread in threads:
            thread.join(RECOVERY)
            assert not thread.is_alive(), f"a worker hangs (seed {seed})"
        assert dirty == [], f"dirty connections handed out: {dirty} (seed {seed})"
        _serves(pool)
        conns = [pool.getconn(timeout=5) for _ in range(4)]  # no slot lost
        for conn in conns:
            pool.putconn(conn)
        assert pool.stats().in_use == 0
    rows = run_sql(
        bouncer_upstream[2],
        "SELECT v FROM t WHERE v > %s AND v < %s",
        (marker, marker + 6 * 100_000 + 1_000_000),
    )
    assert rows is not None
    in_table = {row[0] for row in rows}
    missing = set(acked) - in_table
    assert not missing, f"{len(missing)} acknowledged commits lost (seed {seed})"
    print(
        f"chaos through PgBouncer (seed {seed}): faults {injected}, {len(acked)} commits, "
        f"failures seen by callers {failures}"
    )
    assert len(acked) > 50, f"too little work got through: {len(acked)}, {failures}, {injected}"

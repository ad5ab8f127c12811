"""Faults one at a time: killed backends, restarts, a server that is down, black holes, a full
server, slow connects. Each test injects one fault and checks what the issue promises:
the caller gets a clear error within its deadline, no slot leaks, and the pool heals itself.

No test asserts how fast something is. Where a bound appears, the bound *is* the property
("a checkout during an outage ends within its deadline + 5 s"), and it is generous.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from faultsupport import (
    CONNECT_TIMEOUT,
    SLACK,
    CountingConnector,
    backend_pid,
    connector_threads,
    count_backends,
    in_thread,
    kill_backends,
    kill_pid,
    pool_dsn,
    scalar,
    unique_app,
    wait_for,
    wait_until_accepting,
)

import pgpool
from pgpool.state import BACKOFF_BASE, BACKOFF_CAP
from testbed.embedded import EmbeddedPostgres, run_sql
from testbed.proxy import TcpProxy

MAX_CONNECTING = 2  # connects in flight at once (given explicitly where it matters)


@pytest.fixture
def app() -> str:
    return unique_app("faults")


def _dead_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def _fresh(pool: pgpool.AbstractConnectionPool, timeout: float = 10) -> Any:
    conn = pool.getconn(timeout=timeout)
    assert scalar(conn, "SELECT 1") == 1
    return conn


def _check_out_all(pool: pgpool.AbstractConnectionPool, timeout: float = 10) -> None:
    """No slot is lost: maxconn connections can be checked out at the same time."""
    conns = [pool.getconn(timeout=timeout) for _ in range(pool.maxconn)]
    try:
        for conn in conns:
            assert scalar(conn, "SELECT 1") == 1
        assert len({backend_pid(c) for c in conns}) == pool.maxconn
    finally:
        for conn in conns:
            pool.putconn(conn)


# -- 1. backends killed ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_killed_idle_connections_are_never_handed_out(dsn: str, app: str) -> None:
    with pgpool.ThreadedConnectionPool(3, 3, pool_dsn(dsn, app), health_check_after=0) as pool:
        conns = [pool.getconn() for _ in range(3)]
        before = {backend_pid(c) for c in conns}
        for conn in conns:
            pool.putconn(conn)
        assert kill_backends(dsn, app) == 3
        conns = [pool.getconn(timeout=10) for _ in range(3)]  # each replaced in its deadline
        for conn in conns:
            assert scalar(conn, "SELECT 1") == 1
            assert backend_pid(conn) not in before
        for conn in conns:
            pool.putconn(conn)
        stats = pool.stats()
        assert stats.failed_checks == 3
        assert stats.size == 3 and stats.in_use == 0


@pytest.mark.timeout(60)
def test_killed_idle_connection_is_checked_once_its_check_window_passed(dsn: str, app: str) -> None:
    """With the default health_check_after (0.5 s), a connection idle longer than that is
    pinged at checkout; a dead one is replaced within the caller's deadline."""
    with pgpool.ThreadedConnectionPool(1, 2, pool_dsn(dsn, app)) as pool:
        conn = pool.getconn()
        dead = backend_pid(conn)
        pool.putconn(conn)
        kill_pid(dsn, dead)
        time.sleep(0.6)  # longer than health_check_after: the next checkout must ping
        conn = pool.getconn(timeout=10)
        assert backend_pid(conn) != dead
        assert scalar(conn, "SELECT 1") == 1
        pool.putconn(conn)
        assert pool.stats().failed_checks == 1


@pytest.mark.timeout(60)
def test_within_the_check_window_a_killed_connection_is_handed_out_unchecked(
    dsn: str, app: str
) -> None:
    """The documented trade-off: a connection used less than health_check_after seconds ago
    is handed out without a ping (no round trip under steady load). If it died meanwhile,
    the borrower gets the driver's error, and returning it frees its slot."""
    with pgpool.ThreadedConnectionPool(1, 2, pool_dsn(dsn, app), health_check_after=60) as pool:
        conn = pool.getconn()
        pid = backend_pid(conn)
        pool.putconn(conn)
        kill_pid(dsn, pid)
        conn = pool.getconn()
        assert backend_pid(conn) == pid  # not checked: still the dead one
        with pytest.raises(psycopg2.OperationalError):
            scalar(conn, "SELECT 1")
        _assert_discarded_on_return(pool, conn, pid)


@pytest.mark.timeout(60)
def test_backend_killed_mid_query(dsn: str, app: str) -> None:
    with pgpool.ThreadedConnectionPool(1, 2, pool_dsn(dsn, app)) as pool:
        conn = pool.getconn()
        pid = backend_pid(conn)
        thread, outcome = in_thread(lambda: scalar(conn, "SELECT pg_sleep(30)"))
        wait_for(lambda: _state_of(dsn, pid) == "active", what="query running")
        kill_pid(dsn, pid)
        thread.join(15)
        assert outcome.done.is_set()
        assert isinstance(outcome.error, psycopg2.OperationalError)  # the driver's error
        _assert_discarded_on_return(pool, conn, pid)


def _state_of(dsn: str, pid: int) -> str | None:
    rows = run_sql(dsn, "SELECT state FROM pg_stat_activity WHERE pid = %s", (pid,))
    return rows[0][0] if rows else None


def _assert_discarded_on_return(pool: pgpool.AbstractConnectionPool, conn: Any, pid: int) -> None:
    before = pool.stats()
    pool.putconn(conn)  # no exception: a broken connection is simply not kept
    after = pool.stats()
    assert after.in_use == before.in_use - 1
    assert after.idle == before.idle, "a dead connection went back onto the idle stack"
    assert after.broken_returns == before.broken_returns + 1
    assert conn.closed
    replacement = _fresh(pool)
    assert backend_pid(replacement) != pid
    pool.putconn(replacement)
    _check_out_all(pool)


@pytest.mark.timeout(60)
def test_backend_killed_idle_in_transaction_borrower_sees_it(dsn: str, app: str) -> None:
    with pgpool.ThreadedConnectionPool(1, 2, pool_dsn(dsn, app)) as pool:
        conn = pool.getconn()
        pid = backend_pid(conn)
        assert scalar(conn, "SELECT txid_current() > 0")  # a transaction is now open
        assert kill_backends(dsn, app, state="idle in transaction") == 1
        with pytest.raises(psycopg2.OperationalError):
            scalar(conn, "SELECT 1")
        _assert_discarded_on_return(pool, conn, pid)


@pytest.mark.timeout(60)
def test_backend_killed_idle_in_transaction_returned_unnoticed(dsn: str, app: str) -> None:
    """The borrower never notices: the pool's rollback on return fails, and the pool
    discards the connection instead of leaking its slot (psycopg2.pool leaks it)."""
    with pgpool.ThreadedConnectionPool(1, 2, pool_dsn(dsn, app)) as pool:
        conn = pool.getconn()
        pid = backend_pid(conn)
        scalar(conn, "SELECT 1")  # transaction open
        kill_pid(dsn, pid)
        _assert_discarded_on_return(pool, conn, pid)


@pytest.mark.timeout(60)
def test_backend_killed_under_a_key(dsn: str, app: str) -> None:
    with pgpool.ThreadedConnectionPool(0, 2, pool_dsn(dsn, app)) as pool:
        conn = pool.getconn(key="job-1")
        pid = backend_pid(conn)
        kill_pid(dsn, pid)
        assert pool.getconn(key="job-1") is conn  # sticky, as in psycopg2.pool
        with pytest.raises(psycopg2.OperationalError):
            scalar(conn, "SELECT 1")
        pool.putconn(conn, key="job-1")
        assert pool.stats().in_use == 0
        fresh = pool.getconn(key="job-1")
        assert fresh is not conn and scalar(fresh, "SELECT 1") == 1
        pool.putconn(fresh, key="job-1")


# -- 2. server restart under load -------------------------------------------------------------


class Workers:
    """Threads that loop getconn / query / putconn and record how every call ended."""

    def __init__(self, pool: pgpool.AbstractConnectionPool, n: int, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.ok_times: list[float] = []
        self.errors: Counter[str] = Counter()
        self.unclear: list[BaseException] = []
        self.failed_checkout_durations: list[float] = []
        self.threads = [
            threading.Thread(target=self._run, name=f"worker-{i}", daemon=True) for i in range(n)
        ]

    def __enter__(self) -> Workers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(30)
        hung = [t.name for t in self.threads if t.is_alive()]
        assert not hung, f"worker threads hang: {hung}"

    def successes_after(self, moment: float) -> int:
        with self.lock:
            return sum(1 for t in self.ok_times if t > moment)

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                conn = self.pool.getconn(timeout=self.timeout)
            except BaseException as error:
                self._record(error, time.monotonic() - started)
                time.sleep(0.01)
                continue
            try:
                scalar(conn, "SELECT 1")
                conn.commit()
                with self.lock:
                    self.ok_times.append(time.monotonic())
            except BaseException as error:
                self._record(error, None)
            finally:
                self.pool.putconn(conn)

    def _record(self, error: BaseException, checkout_duration: float | None) -> None:
        with self.lock:
            self.errors[type(error).__name__] += 1
            if not isinstance(error, psycopg2.Error):  # pgpool.PoolError is one too
                self.unclear.append(error)
            if checkout_duration is not None:
                self.failed_checkout_durations.append(checkout_duration)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_under_load(restartable_server: EmbeddedPostgres, app: str, mode: str) -> None:
    server = restartable_server
    timeout = 2.0
    with (
        pgpool.ThreadedConnectionPool(
            2, 5, pool_dsn(server.dsn, app), timeout=timeout, maintenance_interval=0.2
        ) as pool,
        Workers(pool, 6, timeout) as workers,
    ):
        wait_for(lambda: workers.successes_after(0) > 50, what="load running")
        server.stop(mode)  # type: ignore[arg-type]
        down_at = time.monotonic()
        time.sleep(2.0)  # an outage of known length, workers hammering all along
        server.start()
        up_at = time.monotonic()
        # Served again with no help from the application; within the back-off cap + slack.
        wait_for(lambda: workers.successes_after(up_at) > 20, BACKOFF_CAP + timeout + SLACK)
        assert pool.stats().size <= pool.maxconn
    print(f"restart {mode}: errors {dict(workers.errors)}, down {up_at - down_at:.1f} s")
    assert not workers.unclear, f"unclear errors: {workers.unclear!r}"
    assert workers.errors, "the outage went unnoticed: the test did not test anything"
    # The property: no checkout hangs; each ends in its deadline (+ connect_timeout + slack).
    bound = timeout + CONNECT_TIMEOUT + SLACK
    assert max(workers.failed_checkout_durations, default=0) < bound
    # A connect the connector started before closeall ends (and is closed) on its own.
    wait_for(lambda: pool.stats().connecting == 0, CONNECT_TIMEOUT + SLACK, "the connect ending")
    stats = pool.stats()
    assert stats.in_use == 0 and stats.connecting == 0, f"slot leaked: {stats}"


@pytest.mark.timeout(60)
def test_after_restart_pool_refills_minconn_with_live_connections(
    restartable_server: EmbeddedPostgres, app: str
) -> None:
    """A quiet pool (no traffic at all) across a restart: once the server is back, the
    pool's minconn connections are live sessions again, without the application doing
    anything."""
    server = restartable_server
    with pgpool.ThreadedConnectionPool(
        2, 4, pool_dsn(server.dsn, app), maintenance_interval=0.2
    ) as pool:
        assert count_backends(server.dsn, app) == 2
        server.restart("fast")
        wait_for(
            lambda: count_backends(server.dsn, app) >= 2,
            8,
            "pool back to minconn live connections after a restart",
        )
        _check_out_all(pool)


@pytest.mark.timeout(60)
def test_reconnects_back_off_during_an_outage(
    restartable_server: EmbeddedPostgres, app: str
) -> None:
    server = restartable_server
    connector = CountingConnector()
    outage = 4.0
    threads = 4
    with pgpool.ThreadedConnectionPool(
        1,
        4,
        pool_dsn(server.dsn, app),
        timeout=0.3,
        connector=connector,
        maintenance_interval=0.1,
        max_connecting=MAX_CONNECTING,
    ) as pool:
        stop = threading.Event()
        errors: Counter[str] = Counter()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    pool.putconn(pool.getconn())
                except psycopg2.Error as error:  # refused connects, timeouts
                    errors[type(error).__name__] += 1

        server.stop("immediate")
        start = time.monotonic()
        hammers = [threading.Thread(target=hammer, daemon=True) for _ in range(threads)]
        for thread in hammers:
            thread.start()
        time.sleep(outage)
        end = time.monotonic()
        during = connector.attempts_between(start, end)
        # What the same threads would do with no back-off: raw connects in a loop.
        no_backoff = _raw_connect_attempts(server.dsn, 0.5) * (outage / 0.5)
        server.start()
        wait_until_accepting(server.dsn)
        up = time.monotonic()
        # Recovery: a checkout succeeds within the back-off cap (+ deadline + slack).
        wait_for(lambda: _ok(pool), BACKOFF_CAP + 1 + SLACK, "served again after the outage")
        recovered = time.monotonic() - up
        stop.set()
        for thread in hammers:
            thread.join(10)
        assert not any(t.is_alive() for t in hammers)
    bound = _max_attempts_with_backoff(outage, concurrency=MAX_CONNECTING)
    print(
        f"outage {outage} s: {during} connect attempts (back-off bound {bound}, no back-off "
        f"~{no_backoff:.0f}); errors {dict(errors)}; served again {recovered:.2f} s after"
    )
    assert during > 1, "nothing tried to reconnect: the test did not test anything"
    assert during <= bound
    assert during * 20 < no_backoff


def _ok(pool: pgpool.AbstractConnectionPool) -> bool:
    try:
        conn = pool.getconn(timeout=0.5)
    except psycopg2.Error:
        return False
    try:
        return bool(scalar(conn, "SELECT 1") == 1)
    except psycopg2.Error:
        return False
    finally:
        pool.putconn(conn)


def _raw_connect_attempts(dsn: str, seconds: float) -> int:
    attempts = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        attempts += 1
        with contextlib.suppress(psycopg2.OperationalError):
            psycopg2.connect(dsn, connect_timeout=CONNECT_TIMEOUT).close()
    return attempts


def _max_attempts_with_backoff(seconds: float, concurrency: int) -> int:
    """The most connect attempts the back-off allows in `seconds`.

    After the k-th consecutive failure no connect starts for at least half of
    min(BACKOFF_CAP, BACKOFF_BASE * 2**(k-1)) (the jitter is 50-100 %). With `concurrency`
    connects in flight at once, attempt j + concurrency cannot start before attempt j has
    failed and its back-off has passed. Add the two connects of a maintenance pass racing a
    caller, as slack.
    """
    starts: list[float] = []
    for j in range(10_000):
        if j < concurrency:
            t = 0.0
        else:
            k = j - concurrency + 1  # failures known when attempt j may start, at least
            t = starts[j - concurrency] + 0.5 * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (k - 1))
        if t > seconds:
            return len(starts) + 2
        starts.append(t)
    raise AssertionError("unbounded")


# -- 3. server down at start ------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", [pgpool.ThreadedConnectionPool, pgpool.SimpleConnectionPool])
def test_creating_a_pool_while_the_server_is_down_fails_fast(cls: type, app: str) -> None:
    dsn = f"host=127.0.0.1 port={_dead_port()} user=postgres dbname=postgres"
    connector = CountingConnector()
    before = set(threading.enumerate())
    with pytest.raises(psycopg2.OperationalError) as caught:  # the driver's own error
        cls(2, 4, pool_dsn(dsn, app), connector=connector)
    assert not isinstance(caught.value, pgpool.PoolError)
    assert connector.attempts == 1, "kept trying after the first connect failed"
    assert set(threading.enumerate()) <= before, "the failed pool left a thread running"


@pytest.mark.timeout(60)
def test_creating_a_pool_through_a_black_hole_respects_connect_timeout(
    tcp_proxy: TcpProxy, dsn: str, app: str
) -> None:
    tcp_proxy.blackhole()
    before = set(connector_threads())
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError, match="timeout"):
        pgpool.ThreadedConnectionPool(2, 4, pool_dsn(tcp_proxy.dsn_for(dsn), app))
    # The property: creation fails after one connect_timeout, not after minconn of them
    # and not never.
    assert time.monotonic() - started < CONNECT_TIMEOUT + SLACK
    assert set(connector_threads()) <= before, "the failed pool left its thread running"


@pytest.mark.timeout(60)
def test_minconn_zero_pool_starts_while_server_down_and_serves_once_up(
    restartable_server: EmbeddedPostgres, app: str
) -> None:
    server = restartable_server
    server.stop()
    with pgpool.ThreadedConnectionPool(0, 2, pool_dsn(server.dsn, app), timeout=1) as pool:
        thread_name = f"pgpool-connector-{pool.name}"
        with pytest.raises(psycopg2.OperationalError) as connected:
            pool.getconn(timeout=0)  # connects itself: the driver's error
        assert not isinstance(connected.value, pgpool.PoolError)  # PoolTimeout is one too
        with pytest.raises(pgpool.PoolTimeout) as waited:
            pool.getconn()  # waits for the connector: a timeout carrying the driver's error
        assert isinstance(waited.value.__cause__, psycopg2.OperationalError)
        wait_for(lambda: pool.stats().size == 0, CONNECT_TIMEOUT + SLACK, "no connect left")
        server.start()
        wait_for(lambda: _ok(pool), BACKOFF_CAP + SLACK, "served once the server is up")
        assert pool.stats().in_use == 0
    wait_for(
        lambda: all(t.name != thread_name for t in connector_threads()),
        10,
        "connector thread gone after closeall",
    )


# -- 4. network black hole --------------------------------------------------------------------

LIVENESS = {
    "keepalives": "1",
    "keepalives_idle": "1",
    "keepalives_interval": "1",
    "keepalives_count": "2",
    "tcp_user_timeout": "1000",
    "connect_timeout": str(CONNECT_TIMEOUT),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("style", ["dsn", "kwargs"])
def test_liveness_parameters_reach_libpq(dsn: str, app: str, style: str) -> None:
    if style == "dsn":
        args: tuple[Any, ...] = (pool_dsn(dsn, app, **LIVENESS),)
        kwargs: dict[str, Any] = {}
    else:
        args, kwargs = (dsn,), {"application_name": app, **LIVENESS}
    with pgpool.ThreadedConnectionPool(1, 2, *args, **kwargs) as pool:
        conn = pool.getconn()
        params = conn.get_dsn_parameters()
        pool.putconn(conn)
    assert {k: params.get(k) for k in LIVENESS} == LIVENESS


@pytest.mark.timeout(60)
def test_checkout_that_must_connect_through_a_black_hole_fails_in_time(
    tcp_proxy: TcpProxy, dsn: str, app: str
) -> None:
    timeout = 2.0
    with pgpool.ThreadedConnectionPool(
        0, 2, pool_dsn(tcp_proxy.dsn_for(dsn), app, **LIVENESS), timeout=timeout
    ) as pool:
        tcp_proxy.blackhole()
        _thread, outcome = in_thread(pool.getconn)
        # The property: it ends (in an error) within connect_timeout + its timeout + slack.
        assert outcome.done.wait(CONNECT_TIMEOUT + timeout + SLACK), "getconn hangs"
        assert isinstance(outcome.error, psycopg2.OperationalError | pgpool.PoolTimeout)
        # The connector's connect ends by connect_timeout, and frees its slot.
        wait_for(lambda: pool.stats().size == 0, CONNECT_TIMEOUT + SLACK, "the connect ending")
        assert pool.stats().connect_errors >= 1
        tcp_proxy.restore()
        wait_for(lambda: _ok(pool), BACKOFF_CAP + SLACK, "served after the black hole")


@pytest.mark.timeout(60)
def test_checkout_of_an_idle_connection_behind_a_black_hole_ends_in_time(
    tcp_proxy: TcpProxy, dsn: str, app: str
) -> None:
    """The checkout health check pings the idle connection; behind a black hole the ping
    never gets an answer. getconn must still end within its deadline (+ slack): with a
    failure, or with a freshly opened connection."""
    timeout = 2.0
    with pgpool.ThreadedConnectionPool(
        1, 2, pool_dsn(tcp_proxy.dsn_for(dsn), app, **LIVENESS), health_check_after=0
    ) as pool:
        tcp_proxy.blackhole()
        thread, outcome = in_thread(lambda: pool.getconn(timeout=timeout))
        ended = outcome.done.wait(CONNECT_TIMEOUT + timeout + SLACK)
        # While it is stuck, the pool itself is not: its lock is free.
        assert pool.stats().in_use <= 1
        tcp_proxy.restore()  # un-stick it, so that the test ends either way
        thread.join(30)
        if outcome.error is None and outcome.result is not None:
            pool.putconn(outcome.result)
        assert ended, (
            f"getconn(timeout={timeout}) was stuck {outcome.elapsed:.1f} s in its health "
            "check (a ping with no time limit) until the black hole was lifted"
        )


@pytest.mark.timeout(60)
def test_connections_whose_peer_vanished_are_discarded(
    tcp_proxy: TcpProxy, dsn: str, app: str
) -> None:
    with pgpool.ThreadedConnectionPool(
        2, 3, pool_dsn(tcp_proxy.dsn_for(dsn), app, **LIVENESS), health_check_after=0
    ) as pool:
        held = pool.getconn()
        tcp_proxy.blackhole()
        tcp_proxy.drop_all()  # the peer is gone: every link is cut
        tcp_proxy.restore()
        with pytest.raises(psycopg2.OperationalError):
            scalar(held, "SELECT 1")
        pool.putconn(held)  # discarded, its slot freed
        fresh = [pool.getconn(timeout=10) for _ in range(3)]  # the idle one fails its check
        for conn in fresh:
            assert scalar(conn, "SELECT 1") == 1
        for conn in fresh:
            pool.putconn(conn)
        stats = pool.stats()
        assert stats.broken_returns == 1 and stats.failed_checks == 1
        assert stats.in_use == 0 and stats.size <= 3


# -- 5. server full ---------------------------------------------------------------------------


@pytest.fixture
def tiny_server(restartable_server: EmbeddedPostgres) -> Iterator[EmbeddedPostgres]:
    restartable_server.execute("ALTER SYSTEM SET max_connections = 6")
    restartable_server.restart()
    yield restartable_server


@pytest.mark.timeout(60)
def test_server_full(tiny_server: EmbeddedPostgres, app: str) -> None:
    hogs: list[Any] = []
    try:
        for _ in range(20):
            try:
                hogs.append(psycopg2.connect(tiny_server.dsn, connect_timeout=CONNECT_TIMEOUT))
            except psycopg2.OperationalError as error:
                assert "too many clients" in str(error)
                break
        else:
            pytest.fail("max_connections never reached")
        with pgpool.ThreadedConnectionPool(0, 2, pool_dsn(tiny_server.dsn, app), timeout=1) as pool:
            with pytest.raises(psycopg2.OperationalError, match="too many clients") as connected:
                pool.getconn(timeout=0)  # connects itself: the driver's error
            assert not isinstance(connected.value, pgpool.PoolError)  # PoolTimeout is one too
            with pytest.raises(pgpool.PoolTimeout, match="too many clients") as waited:
                pool.getconn()  # waits for the connector: a timeout naming the error
            assert isinstance(waited.value.__cause__, psycopg2.OperationalError)
            wait_for(lambda: pool.stats().connecting == 0, SLACK, "the last connect ending")
            stats = pool.stats()
            assert stats.size == 0 and stats.connecting == 0, f"slot not freed: {stats}"
            hogs.pop().close()
            wait_for(lambda: _ok(pool), BACKOFF_CAP + SLACK, "recovered once a slot freed up")
            assert pool.stats().in_use == 0
    finally:
        for hog in hogs:
            hog.close()


# -- 6. slow connects -------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_held_connect_blocks_no_checkout_or_return(dsn: str, app: str) -> None:
    connector = CountingConnector()
    with pgpool.ThreadedConnectionPool(
        1, 3, pool_dsn(dsn, app), connector=connector, timeout=10
    ) as pool:
        conn = pool.getconn()
        connector.gate.clear()  # the next connect is held until the test lets it go
        connector.started.clear()
        _waiter, outcome = in_thread(pool.getconn, "waiter")
        assert connector.started.wait(10)  # the connector connects for the waiter: held
        try:
            pool.putconn(conn)  # ... and a return serves the waiter meanwhile
            assert outcome.done.wait(10)
            assert outcome.result is conn
            for _ in range(20):  # returns and checkouts go on meanwhile
                pool.putconn(conn)
                conn = pool.getconn(timeout=1)
            assert pool.stats().connecting == 1
        finally:
            connector.gate.set()
        wait_for(lambda: pool.stats().idle == 1, 15, "the held connect joining the idle stack")
        assert pool.stats().connecting == 0
        pool.putconn(conn)


@pytest.mark.timeout(60)
def test_a_slow_connect_does_not_delay_a_waiter_served_by_a_return(dsn: str, app: str) -> None:
    # Two callers wait; the connector's connect for them is held. A returned connection
    # serves the first at once; the second gets the new connection when it is ready.
    connector = CountingConnector()
    with pgpool.ThreadedConnectionPool(
        0, 2, pool_dsn(dsn, app), connector=connector, timeout=10
    ) as pool:
        held = pool.getconn()
        connector.gate.clear()
        connector.started.clear()
        _first, first = in_thread(pool.getconn, "first-waiter")
        try:
            assert connector.started.wait(10)
            _second, second = in_thread(pool.getconn, "second-waiter")
            wait_for(lambda: pool.stats().waiting == 2, what="second caller queued")
            pool.putconn(held)
            assert first.done.wait(10)
            assert first.result is held
            assert not second.done.is_set()  # the first was served while the connect is held
        finally:
            connector.gate.set()
        assert second.done.wait(15)
        assert second.error is None and second.result is not held
        pool.putconn(first.result)
        pool.putconn(second.result)


@pytest.mark.timeout(60)
def test_slow_connects_through_the_proxy_block_nobody(
    tcp_proxy: TcpProxy, dsn: str, app: str
) -> None:
    connector = CountingConnector()
    with pgpool.ThreadedConnectionPool(
        1,
        4,
        pool_dsn(tcp_proxy.dsn_for(dsn), app, connect_timeout=20),
        connector=connector,
        timeout=20,
    ) as pool:
        hot = pool.getconn()
        tcp_proxy.connect_delay = 3.0  # every new connection now takes >= 3 s
        connector.started.clear()
        connector.finished.clear()
        slow = [in_thread(pool.getconn, f"slow-{i}") for i in range(2)]
        assert connector.started.wait(10)
        wait_for(lambda: pool.stats().waiting == 2, what="both callers queued")
        pending = [outcome for _thread, outcome in slow]
        for _ in slow:  # each is served by the hot connection in turn, not by a connect
            pool.putconn(hot)
            wait_for(lambda: any(o.done.is_set() for o in pending), 10, "a waiter served")
            served = next(o for o in pending if o.done.is_set())
            pending.remove(served)
            assert served.error is None
            hot = served.result
        cycles = 0
        while cycles < 50:  # the hot connection keeps cycling between checkouts
            pool.putconn(hot)
            hot = pool.getconn(timeout=1)
            assert scalar(hot, "SELECT 1") == 1
            cycles += 1
        assert not connector.finished.is_set(), "checkouts waited for the slow connects"
        pool.putconn(hot)
        assert pool.stats().in_use == 0

"""pgpool through PgBouncer, in session and transaction pool modes.

The pool's behaviour that must hold through PgBouncer (threads sharing it, rollback on
return, blocking and timeouts, dead connections dropped) is run in both modes. What cannot
hold in transaction mode, where consecutive transactions of one client connection may run on
different server connections, is an xfail with the reason; docs/deploying.md lists the same.

The `reset` tests show which reset is right for each mode:

- session mode: one client connection keeps one server connection, so pgpool's `reset`
  separates the borrowers of one pooled connection exactly as it does without PgBouncer,
  and PgBouncer's ``server_reset_query`` (DISCARD ALL) cleans the server connection when
  pgpool *closes* a connection, before another client gets it;
- transaction mode: session state reaches the next client at COMMIT, before pgpool could
  run any reset, so `reset=discard_all` protects nothing (and costs a round trip on every
  return): keep `reset=None` and scope settings to a transaction (``SET LOCAL``).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from bouncersupport import (
    MODES,
    BouncerFactory,
    Upstream,
    bouncer_factory,
    bouncer_servers,
    kill_server_connections,
    make_pool,
    one,
    prepare_upstream,
    raw,
    requires_pgbouncer,
)
from conftest import PgServer
from faultsupport import is_dirty, wait_for

import pgpool
from testbed.pgbouncer import PoolMode

pytestmark = requires_pgbouncer


@pytest.fixture(scope="module")
def bouncer_upstream(pg_server: PgServer) -> Upstream:
    return prepare_upstream(pg_server)


@pytest.fixture
def make_bouncer(bouncer_upstream: Upstream) -> Iterator[BouncerFactory]:
    yield from bouncer_factory(bouncer_upstream)


TRANSACTION_MODE_SESSION_STATE = (
    "transaction mode: the next transaction of this client connection may run on another "
    "server connection, and another client may get this one (session state does not follow "
    "the client connection)"
)


def _xfail_in_transaction_mode(mode: PoolMode) -> Any:
    marks = (
        [pytest.mark.xfail(strict=True, reason=TRANSACTION_MODE_SESSION_STATE)]
        if mode == "transaction"
        else []
    )
    return pytest.param(mode, marks=marks, id=mode)


# -- the pool's behaviour, in both modes ----------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_threads_share_the_pool(
    make_bouncer: BouncerFactory, bouncer_upstream: Upstream, mode: PoolMode
) -> None:
    bouncer = make_bouncer(mode, default_pool_size=3)
    marker = random.randrange(1, 2**31)
    errors: list[BaseException] = []
    most_server_connections = 0
    with make_pool(bouncer, 1, 3, timeout=10) as pool:

        def worker() -> None:
            try:
                for _ in range(40):
                    with pool.connection() as conn, conn.cursor() as cur:
                        cur.execute("INSERT INTO t VALUES (%s)", (marker,))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for thread in threads:
            thread.start()
        while any(t.is_alive() for t in threads):
            most_server_connections = max(most_server_connections, bouncer_servers(bouncer))
            time.sleep(0.01)
        assert errors == []
        assert pool.stats().in_use == 0
        with pool.connection() as conn:
            assert one(conn, "SELECT count(*) FROM t WHERE v = %s", (marker,)) == 8 * 40
    assert 1 <= most_server_connections <= 3  # PgBouncer's pool size bounds the server's share


@pytest.mark.parametrize("mode", MODES)
def test_a_returned_transaction_is_rolled_back(
    make_bouncer: BouncerFactory, mode: PoolMode
) -> None:
    bouncer = make_bouncer(mode)
    marker = random.randrange(1, 2**31)
    with make_pool(bouncer, 1, 1) as pool:
        conn = pool.getconn()
        conn.cursor().execute("INSERT INTO t VALUES (%s)", (marker,))  # left uncommitted
        pool.putconn(conn)
        conn = pool.getconn()
        assert is_dirty(conn) is None
        assert one(conn, "SELECT count(*) FROM t WHERE v = %s", (marker,)) == 0
        pool.putconn(conn)


@pytest.mark.parametrize("mode", MODES)
def test_an_exhausted_pool_waits_then_times_out(
    make_bouncer: BouncerFactory, mode: PoolMode
) -> None:
    bouncer = make_bouncer(mode)
    with make_pool(bouncer, 1, 1) as pool:
        held = pool.getconn()
        started = time.monotonic()
        with pytest.raises(pgpool.PoolTimeout):
            pool.getconn(timeout=0.3)
        assert time.monotonic() - started >= 0.3
        threading.Timer(0.2, pool.putconn, (held,)).start()
        conn = pool.getconn(timeout=5)  # served by the return
        assert conn is held
        pool.putconn(conn)


@pytest.mark.parametrize("mode", MODES)
def test_killed_server_connections_are_survived(
    make_bouncer: BouncerFactory, bouncer_upstream: Upstream, mode: PoolMode
) -> None:
    """Server backends die (an administrator, a crash): in session mode PgBouncer closes
    the client connections linked to them and pgpool's health check drops those; in
    transaction mode the client connections never notice."""
    bouncer = make_bouncer(mode)
    # No maintenance thread: the checkouts' health checks, counted below, find the dead.
    with make_pool(bouncer, 3, 3, health_check_after=0.1, maintenance_interval=None) as pool:
        conns = [pool.getconn() for _ in range(3)]
        for conn in conns:
            one(conn, "SELECT 1")
            pool.putconn(conn)
        assert kill_server_connections(bouncer_upstream[2]) >= 1
        time.sleep(0.2)  # past health_check_after: the next checkouts ping first
        for _ in range(10):
            with pool.connection(timeout=10) as conn:
                assert one(conn, "SELECT 1") == 1
        stats = pool.stats()
        if mode == "session":
            assert stats.failed_checks >= 1
        else:
            assert stats.failed_checks == 0


# -- session state: what holds in session mode only -----------------------------------------


# Session features: (what the first borrower does, what the next one runs, what it must
# see). Each is left on the server connection the first borrower's transaction ran on.
SESSION_FEATURES = {
    "set": ("SET search_path TO borrower_one", "SHOW search_path", "borrower_one"),
    "prepare": ("PREPARE answer AS SELECT 42", "EXECUTE answer", 42),
    "temp-table": ("CREATE TEMP TABLE scratch AS SELECT 7 AS v", "SELECT v FROM scratch", 7),
    "advisory-lock": (
        "SELECT pg_advisory_lock(4242)",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
        1,
    ),
    "configure": (None, "SHOW search_path", "configured"),  # SET run by configure=
}


def _set_in_configure(conn: Any) -> None:
    one(conn, "SET search_path TO configured")


@pytest.mark.parametrize("feature", list(SESSION_FEATURES))
@pytest.mark.parametrize("mode", [_xfail_in_transaction_mode(m) for m in MODES])
def test_session_state_survives_a_return(
    make_bouncer: BouncerFactory, mode: PoolMode, feature: str
) -> None:
    """What one borrower leaves in the session (a `SET`, a prepared statement, a temporary
    table, a session advisory lock, or a `SET` run by the pool's `configure`) is still
    there for the next borrower of the same pooled connection: pgpool resets only what its
    `reset` says. Between the two, another PgBouncer client takes the server connection,
    which in transaction mode moves our next transaction to another server connection."""
    setup, check, expected = SESSION_FEATURES[feature]
    bouncer = make_bouncer(mode, default_pool_size=2)
    configure = _set_in_configure if setup is None else None
    with make_pool(bouncer, 1, 1, configure=configure) as pool, raw(bouncer) as other:
        conn = pool.getconn()
        if setup is not None:
            one(conn, setup)
        pool.putconn(conn)
        other.cursor().execute("SELECT 1")  # a transaction left open: holds a server conn
        conn = pool.getconn()
        try:
            assert one(conn, check) == expected
        finally:
            other.rollback()
            pool.putconn(conn, close=True)  # what it left must not outlive the test


# -- the right reset for each mode ------------------------------------------------------------


@pytest.mark.parametrize("reset", [None, pgpool.discard_all], ids=["no-reset", "discard_all"])
def test_session_mode_pgpools_reset_is_what_separates_borrowers(
    make_bouncer: BouncerFactory, reset: Any
) -> None:
    """Session mode: PgBouncer resets nothing while pgpool keeps the client connection
    open, so between two borrowers it is pgpool's `reset`, as without PgBouncer."""
    bouncer = make_bouncer("session")
    with make_pool(bouncer, 1, 1, reset=reset) as pool:
        with pool.connection() as conn:
            conn.cursor().execute("SET search_path TO borrower_one")
        with pool.connection() as conn:
            seen = one(conn, "SHOW search_path")
    assert seen == ("borrower_one" if reset is None else '"$user", public')


def test_session_mode_pgbouncer_discards_when_pgpool_closes_a_connection(
    make_bouncer: BouncerFactory,
) -> None:
    """Session mode: when pgpool closes a connection (lifetime, idle reaping, close=True),
    PgBouncer runs its server_reset_query (DISCARD ALL) before another client gets the
    server connection: that part of the cleaning is PgBouncer's job, not pgpool's."""
    bouncer = make_bouncer("session", default_pool_size=1)
    with make_pool(bouncer, 0, 1) as pool:
        conn = pool.getconn()
        one(conn, "SET search_path TO left_behind")
        server_pid = one(conn, "SELECT pg_backend_pid()")
        pool.putconn(conn, close=True)
    with raw(bouncer) as other:
        assert one(other, "SELECT pg_backend_pid()") == server_pid  # the same server conn...
        assert one(other, "SHOW search_path") == '"$user", public'  # ...wiped by PgBouncer


def test_transaction_mode_state_reaches_other_clients_before_any_reset(
    make_bouncer: BouncerFactory,
) -> None:
    """Transaction mode: a session SET leaks to whichever client runs the next transaction
    on that server connection, at COMMIT, while the borrower still holds its connection.
    A `reset` at return comes too late, so DISCARD ALL there protects nothing."""
    bouncer = make_bouncer("transaction", default_pool_size=1)
    pool = make_pool(bouncer, 1, 1, reset=pgpool.discard_all)
    with pool, raw(bouncer) as other, pool.connection() as conn:
        one(conn, "SET search_path TO leaked")
        assert one(other, "SHOW search_path") == "leaked"  # before our return and reset


def test_transaction_mode_set_local_stays_in_its_transaction(make_bouncer: BouncerFactory) -> None:
    """The way to change a setting in transaction mode: SET LOCAL (or set_config(..., true)),
    undone at the end of the transaction, with no reset needed (`reset=None`)."""
    bouncer = make_bouncer("transaction", default_pool_size=1)
    with make_pool(bouncer, 1, 1) as pool, raw(bouncer) as other:
        with pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SET LOCAL search_path TO mine")
            cur.execute("SHOW search_path")
            assert cur.fetchone() == ("mine",)
        assert one(other, "SHOW search_path") == '"$user", public'


def test_transaction_mode_multiplexes_many_clients_on_few_server_connections(
    make_bouncer: BouncerFactory, bouncer_upstream: Upstream
) -> None:
    """Three pools of 3 (nine client connections) share PgBouncer's two server connections;
    a transaction waits in PgBouncer's queue while both are busy, and nobody fails."""
    bouncer = make_bouncer("transaction", default_pool_size=2)
    pools = [make_pool(bouncer, 3, 3, timeout=10) for _ in range(3)]
    errors: list[BaseException] = []

    def worker(pool: Any) -> None:
        try:
            for _ in range(10):
                with pool.connection() as conn:
                    one(conn, "SELECT pg_sleep(0.005)")
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=worker, args=(p,)) for p in pools for _ in range(3)]
        for thread in threads:
            thread.start()
        most = 0
        while any(t.is_alive() for t in threads):
            most = max(most, bouncer_servers(bouncer))
            time.sleep(0.01)
        assert errors == []
        assert bouncer.pool_row()["cl_active"] == 9
        assert most <= 2
    finally:
        for pool in pools:
            pool.closeall()


def test_session_mode_needs_a_server_connection_per_pooled_connection(
    make_bouncer: BouncerFactory,
) -> None:
    """Session mode: each open pgpool connection pins a server connection, idle or not.
    With PgBouncer's pool full, one more connection's first query waits query_wait_timeout
    and fails; pgpool discards that connection and keeps serving with the others. Size
    processes x maxconn <= default_pool_size in session mode."""
    bouncer = make_bouncer("session", default_pool_size=2, query_wait_timeout=1)
    with make_pool(bouncer, 0, 3, timeout=10) as pool:
        first, second = pool.getconn(), pool.getconn()
        one(first, "SELECT 1")
        one(second, "SELECT 1")
        pool.putconn(first)  # idle in pgpool, still holding its server connection
        third = pool.getconn(timeout=0)  # LIFO: `first`, so nothing waits...
        assert third is first
        fourth = pool.getconn()  # ...but this one is new, and finds PgBouncer's pool full
        with pytest.raises(psycopg2.OperationalError):
            one(fourth, "SELECT 1")
        pool.putconn(fourth)  # broken: discarded, its slot freed
        for conn in (third, second):
            pool.putconn(conn)
        assert pool.stats().broken_returns == 1
        for _ in range(5):
            with pool.connection() as conn:
                assert one(conn, "SELECT 1") == 1
        wait_for(lambda: pool.stats().in_use == 0, 5, "everything returned")


# -- the testbed's PgBouncer itself -----------------------------------------------------------


def test_the_testbed_pgbouncer_runs_unprivileged_and_keeps_its_port(
    make_bouncer: BouncerFactory,
) -> None:
    """PgBouncer refuses to run as root: as root, the testbed runs it as the embedded
    server's system user. A restart keeps the port (clients' DSNs stay valid); close()
    removes its directory."""
    bouncer = make_bouncer("transaction")
    assert bouncer._process is not None
    status = Path(f"/proc/{bouncer._process.pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert uid != 0
    port = bouncer.port
    bouncer.restart()
    assert bouncer.port == port and bouncer.running
    assert "transaction mode, running" in repr(bouncer)
    directory = bouncer.directory
    bouncer.close()
    assert directory is not None and not directory.exists()
    assert not bouncer.running

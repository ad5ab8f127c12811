"""Helpers for the tests that run pgpool through PgBouncer.

Nothing here is a fixture: a test module declares its two fixtures on top of
`prepare_upstream` and `bouncer_factory` (see tests/test_pgbouncer.py). Each test gets its
own PgBouncer (starting one takes ~50 ms) in front of the session's server, forwarding to a
database of its own, ``via_pgbouncer``: the server-side connections PgBouncer opens are then
exactly the backends of that database, which is how the tests count and kill them. Tests
are skipped, with the way to get it, when pgbouncer is missing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import pytest
from conftest import EXTERNAL_DSN, PgServer
from faultsupport import CONNECT_TIMEOUT
from psycopg2.extensions import make_dsn, parse_dsn

import pgpool
from testbed.embedded import run_sql
from testbed.pgbouncer import MISSING, PgBouncer, PoolMode, find_pgbouncer

DATABASE = "via_pgbouncer"
MODES: tuple[PoolMode, ...] = ("session", "transaction")

requires_pgbouncer = pytest.mark.skipif(find_pgbouncer() is None, reason=MISSING)

BouncerFactory = Callable[..., PgBouncer]


Upstream = tuple[str, int, str]  # host, port, admin DSN of the via_pgbouncer database


def prepare_upstream(pg_server: PgServer) -> Upstream:
    """Make the via_pgbouncer database on the session's server (once); see `Upstream`."""
    if EXTERNAL_DSN:
        pytest.skip("PgBouncer tests need the embedded server (trust auth on loopback)")
    params = parse_dsn(pg_server.dsn)
    rows = run_sql(pg_server.dsn, "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
    if not rows:
        run_sql(pg_server.dsn, f"CREATE DATABASE {DATABASE}")
    run_sql(make_dsn(pg_server.dsn, dbname=DATABASE), "CREATE TABLE IF NOT EXISTS t (v int)")
    return params["host"], int(params["port"]), make_dsn(pg_server.dsn, dbname=DATABASE)


def bouncer_factory(bouncer_upstream: Upstream) -> Iterator[BouncerFactory]:
    """Body of a ``make_bouncer`` fixture: ``make_bouncer(pool_mode, **settings)`` returns
    a started PgBouncer, closed after the test."""
    host, port, _ = bouncer_upstream
    made: list[PgBouncer] = []

    def make(pool_mode: PoolMode, **settings: Any) -> PgBouncer:
        bouncer = PgBouncer(host, port, pool_mode=pool_mode, database=DATABASE, **settings)
        made.append(bouncer)
        return bouncer.start()

    yield make
    for bouncer in made:
        bouncer.close()
    # Server connections PgBouncer held are closed with it; wait so the next test's counts
    # of this database's backends start from zero.
    for _ in range(200):
        if server_connections(bouncer_upstream[2]) == 0:
            break
        time.sleep(0.02)


def server_connections(admin_dsn: str) -> int:
    """Backends of the via_pgbouncer database: PgBouncer's server-side connections."""
    rows = run_sql(
        admin_dsn,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
        (DATABASE,),
    )
    assert rows is not None
    count: int = rows[0][0]
    return count


def bouncer_servers(bouncer: Any) -> int:
    """Server connections of this PgBouncer alone (its ``SHOW SERVERS``). Counting backends
    in pg_stat_activity would also count those of an earlier test's PgBouncer still closing."""
    return len(bouncer.admin_dicts("SHOW SERVERS"))


def kill_server_connections(admin_dsn: str) -> int:
    """pg_terminate_backend every server-side connection PgBouncer holds; how many died."""
    rows = run_sql(
        admin_dsn,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (DATABASE,),
    )
    assert rows is not None
    count: int = rows[0][0]
    return count


def bouncer_dsn(bouncer: PgBouncer) -> str:
    """The client DSN, with the short connect_timeout the fault tests rely on."""
    return make_dsn(bouncer.dsn, connect_timeout=CONNECT_TIMEOUT)


def make_pool(bouncer: PgBouncer, minconn: int = 1, maxconn: int = 4, **options: Any) -> Any:
    """A ThreadedConnectionPool through `bouncer` (closed by the caller)."""
    return pgpool.ThreadedConnectionPool(minconn, maxconn, bouncer_dsn(bouncer), **options)


def one(conn: Any, sql: str, params: Any = None) -> Any:
    """Run `sql` on `conn`, commit, return the first column of the first row."""
    with conn.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone() if cur.description is not None else None
    conn.commit()
    return None if row is None else row[0]


@contextlib.contextmanager
def raw(bouncer: PgBouncer) -> Iterator[Any]:
    """A plain psycopg2 connection through `bouncer`: another client of PgBouncer."""
    conn = psycopg2.connect(bouncer_dsn(bouncer))
    try:
        yield conn
    finally:
        conn.close()

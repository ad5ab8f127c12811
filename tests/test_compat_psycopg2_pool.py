"""psycopg2-pool (PyPI), the lightweight peer, next to pgpool on the real server.

docs/compat.md compares the two feature by feature; these tests show the differences that
matter most, on the session's PostgreSQL, counting sessions the way the server does
(`pg_stat_activity` per `application_name`):

- psycopg2-pool does not enforce `maxconn`: a connection taken from its idle deque is
  never counted as in use, so `ThreadSafeConnectionPool(minconn=2, maxconn=2)` hands out
  4 connections before it raises "connection pool exhausted";
- it accepts the same connection back twice; then either two callers share it, or (once
  the monotonic clock has passed `idle_timeout`, as on any machine up for 10 minutes) the
  second `getconn` closes it under the first caller, taking its missing return time for
  "idle since 0".

pgpool, given the same sizes, hands out 2 and reports the third caller's timeout; a
second return of one connection raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest

import pgpool
from tests.conftest import PgServer

psycopg2_pool: Any = pytest.importorskip("psycopg2_pool")  # the bench extra installs it


@pytest.fixture
def app_name() -> str:
    return f"compat-{uuid.uuid4().hex[:12]}"


def sessions(pg_server: PgServer, app_name: str) -> int:
    """Sessions the server has open for this application name."""
    rows = pg_server.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", (app_name,)
    )
    assert rows is not None
    return int(rows[0][0])


@pytest.fixture
def peer(dsn: str, app_name: str) -> Iterator[Any]:
    pool = psycopg2_pool.ThreadSafeConnectionPool(
        minconn=2, maxconn=2, dsn=dsn, application_name=app_name
    )
    yield pool
    pool.clear()
    for conn in list(pool.connections_in_use):
        conn.close()


def test_psycopg2_pool_hands_out_more_than_maxconn(
    peer: Any, pg_server: PgServer, app_name: str
) -> None:
    handed_out = []
    with pytest.raises(psycopg2_pool.PoolError, match="connection pool exhausted"):
        while True:
            handed_out.append(peer.getconn())
            assert len(handed_out) < 10, "psycopg2-pool never raised"
    try:
        assert len(handed_out) == 4  # maxconn=2
        assert len({id(c) for c in handed_out}) == 4
        assert sessions(pg_server, app_name) == 4
        # The two taken from the idle deque were never counted as in use:
        assert len(peer.connections_in_use) == 2
    finally:
        for conn in handed_out:
            conn.close()


def test_pgpool_hands_out_maxconn_and_no_more(dsn: str, pg_server: PgServer, app_name: str) -> None:
    with pgpool.ThreadedConnectionPool(2, 2, dsn, application_name=app_name) as pool:
        first, second = pool.getconn(), pool.getconn()
        with pytest.raises(pgpool.PoolTimeout):
            pool.getconn(timeout=0)
        assert sessions(pg_server, app_name) == 2
        pool.putconn(first)
        pool.putconn(second)


def test_psycopg2_pool_accepts_a_connection_twice(peer: Any) -> None:
    conn = peer.getconn()
    peer.putconn(conn)
    peer.putconn(conn)  # no error: the deque now holds it twice
    a = peer.getconn()
    assert a is conn and not a.closed
    b = peer.getconn()  # pops `conn` again
    # Shared by two callers, or closed under the first one: either way `a` is broken.
    assert b is a or a.closed
    peer.putconn(b)


def test_pgpool_refuses_a_connection_returned_twice(dsn: str) -> None:
    with pgpool.ThreadedConnectionPool(2, 2, dsn) as pool:
        conn = pool.getconn()
        pool.putconn(conn)
        with pytest.raises(pgpool.PoolError, match="returned twice"):
            pool.putconn(conn)
        a, b = pool.getconn(), pool.getconn()
        assert a is not b
        pool.putconn(a)
        pool.putconn(b)


def test_psycopg2_pool_raises_its_own_error_class(peer: Any) -> None:
    """`except psycopg2.pool.PoolError` does not catch psycopg2-pool's "exhausted"."""
    assert not issubclass(psycopg2_pool.PoolError, psycopg2.Error)
    assert issubclass(pgpool.PoolError, psycopg2.pool.PoolError)

"""The public API against a real server: constructors, checkout/return, keys, errors,
stats, repr, context managers, and the option names that must never reach libpq."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import psycopg2.pool
import pytest
from psycopg2.extensions import parse_dsn
from support import (
    Pools,
    backend_count,
    drop_table,
    make_table,
    pools_fixture,
    select_one,
    table_fixture,
    table_rows,
    unique_app_name,
)

import pgpool
import pgpool.errors


@pytest.fixture
def pools(dsn: str) -> Iterator[Pools]:
    yield from pools_fixture(dsn)


@pytest.fixture
def table(dsn: str, pools: Pools) -> Iterator[str]:
    yield from table_fixture(dsn, pools)


def _who(conn: Any) -> tuple[str, str]:
    with conn.cursor() as cursor:
        cursor.execute("SELECT current_database(), current_user")
        row = cursor.fetchone()
    return row[0], row[1]


# -- construction ------------------------------------------------------------------------


def _uri(dsn: str) -> str:
    p = parse_dsn(dsn)
    return f"postgresql://{p['user']}@{p['host']}:{p['port']}/{p['dbname']}"


@pytest.mark.parametrize("form", ["dsn", "dsn_keyword", "uri", "kwargs", "dsn_plus_kwargs"])
def test_constructor_forms_reach_the_server(pools: Pools, dsn: str, form: str) -> None:
    params = parse_dsn(dsn)
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = {}
    if form == "dsn":
        args = (dsn,)
    elif form == "dsn_keyword":
        kwargs = {"dsn": dsn}
    elif form == "uri":
        args = (_uri(dsn),)
    elif form == "kwargs":
        kwargs = {k: params[k] for k in ("host", "port", "dbname", "user")}
    else:  # libpq merges keyword arguments into the DSN, overriding it
        args = (psycopg2.extensions.make_dsn(dsn, dbname="no_such_db"),)
        kwargs = {"dbname": params["dbname"]}
    pool = pools.add(
        pgpool.ThreadedConnectionPool(1, 2, *args, maintenance_interval=None, **kwargs)
    )
    assert isinstance(pool, pgpool.ThreadedConnectionPool)
    conn = pool.getconn()
    assert _who(conn) == (params["dbname"], params["user"])
    pool.putconn(conn)


def test_libpq_parameters_and_application_name_pass_through(pools: Pools, dsn: str) -> None:
    app = unique_app_name()
    pool = pools.threaded(
        2, 3, dsn, application_name=app, connect_timeout=5, options="-c search_path=pg_catalog"
    )
    conn = pool.getconn()
    with conn.cursor() as cursor:
        cursor.execute("SELECT current_setting('application_name'), current_setting('search_path')")
        assert cursor.fetchone() == (app, "pg_catalog")
    assert conn.info.dsn_parameters["connect_timeout"] == "5"
    assert backend_count(dsn, app) == 2  # minconn, opened eagerly
    pool.putconn(conn)


def test_cursor_factory_is_passed_to_connect(pools: Pools) -> None:
    pool = pools.threaded(0, 1, cursor_factory=psycopg2.extras.RealDictCursor)
    conn = pool.getconn()
    with conn.cursor() as cursor:
        assert isinstance(cursor, psycopg2.extras.RealDictCursor)
        cursor.execute("SELECT 1 AS one, 'x' AS two")
        assert cursor.fetchone() == {"one": 1, "two": "x"}
    pool.putconn(conn)


class _TaggedConnection(psycopg2.extensions.connection):
    tag = "mine"


def test_connection_factory_is_passed_to_connect(pools: Pools) -> None:
    pool = pools.threaded(1, 2, connection_factory=_TaggedConnection)
    first, second = pool.getconn(), pool.getconn()  # one from minconn, one opened on demand
    for conn in (first, second):
        assert type(conn) is _TaggedConnection
        assert select_one(conn) == 1
    pool.putconn(first)
    pool.putconn(second)


def test_misspelled_pool_option_reaches_libpq_and_fails_at_construction(dsn: str) -> None:
    # Not a pool option, so it goes to psycopg2.connect, which refuses it up front
    # (with minconn > 0 the pool connects in its constructor): a typo cannot go unnoticed.
    with pytest.raises(psycopg2.ProgrammingError, match="max_idel"):
        pgpool.ThreadedConnectionPool(1, 2, dsn, max_idel=5, maintenance_interval=None)


def test_getconn_returns_a_real_psycopg2_connection(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    conn = pool.getconn()
    assert isinstance(conn, psycopg2.extensions.connection)
    assert conn.closed == 0
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE
    assert conn.autocommit is False
    # psycopg2.extras works on it as on any connection.
    with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
        cursor.execute("SELECT %s::jsonb AS doc", (psycopg2.extras.Json({"a": [1, 2]}),))
        assert cursor.fetchone() == {"doc": {"a": [1, 2]}}
    with conn.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE ev (x int, y text)")
        psycopg2.extras.execute_values(cursor, "INSERT INTO ev VALUES %s", [(1, "a"), (2, "b")])
        cursor.execute("SELECT count(*) FROM ev")
        assert cursor.fetchone() == (2,)
    conn.rollback()
    pool.putconn(conn)


def test_attributes(pools: Pools) -> None:
    named = pools.threaded(1, 3, name="orders")
    assert (named.minconn, named.maxconn, named.closed, named.name) == (1, 3, False, "orders")
    unnamed = pools.threaded(0, 2)
    assert re.fullmatch(r"pgpool-\d+", unnamed.name)
    assert pools.threaded(0, 2).name != unnamed.name  # each pool gets its own default name
    named.closeall()
    assert named.closed is True


def test_getconn_and_putconn_cycle(pools: Pools) -> None:
    pool = pools.threaded(0, 2)
    conn = pool.getconn()
    assert select_one(conn) == 1
    pool.putconn(conn)
    assert pool.getconn() is conn  # kept, not closed, and handed out again
    pool.putconn(conn)
    assert conn.closed == 0


# -- keys (psycopg2.pool semantics) --------------------------------------------------------


def test_same_key_same_connection_while_checked_out(pools: Pools) -> None:
    pool = pools.threaded(0, 3)
    a = pool.getconn("a")
    assert pool.getconn("a") is a
    b = pool.getconn("b")
    assert b is not a
    assert pool.getconn(key="a") is a
    assert pool.stats().in_use == 2
    pool.putconn(a, key="a")  # put back by key
    pool.putconn(b)  # or without it: the pool knows the key
    assert pool.stats().in_use == 0
    again = pool.getconn("a")  # the key is free again: any connection will do
    assert pool.getconn("a") is again
    pool.putconn(again, "a")


def test_key_zero_is_a_key(pools: Pools) -> None:
    # psycopg2 issue #848: psycopg2.pool treats key 0 as "no key" in putconn.
    pool = pools.threaded(0, 2)
    zero = pool.getconn(0)
    assert pool.getconn(0) is zero
    unkeyed = pool.getconn(None)  # None is "no key": another connection
    assert unkeyed is not zero
    assert pool.stats().in_use == 2
    pool.putconn(zero, key=0)
    zero_again = pool.getconn(key=0)
    pool.putconn(zero_again)  # without the key works too
    pool.putconn(unkeyed)
    assert pool.stats().in_use == 0


@pytest.mark.parametrize("key", [0, "", False, (1, "t"), 2.5, frozenset()])
def test_any_hashable_is_a_key(pools: Pools, key: object) -> None:
    pool = pools.threaded(0, 2)
    conn = pool.getconn(key)
    assert pool.getconn(key) is conn
    assert pool.stats().checkouts == 2
    pool.putconn(conn, key)
    assert pool.stats().in_use == 0


def test_sticky_key_is_served_even_when_exhausted(pools: Pools) -> None:
    pool = pools.threaded(0, 1, timeout=0)
    conn = pool.getconn("k")
    with pytest.raises(pgpool.PoolTimeout):
        pool.getconn()
    assert pool.getconn("k") is conn
    pool.putconn(conn)


# -- errors --------------------------------------------------------------------------------


def test_pool_error_is_psycopg2s() -> None:
    assert issubclass(pgpool.PoolError, psycopg2.pool.PoolError)
    assert issubclass(pgpool.PoolError, psycopg2.Error)
    for error in (pgpool.PoolTimeout, pgpool.PoolClosed, pgpool.TooManyWaiting):
        assert issubclass(error, pgpool.PoolError)


def test_every_pgpool_exception_subclasses_pgpool_pool_error() -> None:
    found = [
        value
        for module in (pgpool, pgpool.errors)
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, BaseException)
        and value.__module__.startswith("pgpool")
    ]
    assert {e.__name__ for e in found} >= {"PoolError", "PoolTimeout", "PoolClosed"}
    for error in found:
        assert issubclass(error, pgpool.PoolError), error


# -- stats ---------------------------------------------------------------------------------


def test_stats_is_a_frozen_snapshot(pools: Pools) -> None:
    pool = pools.threaded(1, 2, name="snap")
    before = pool.stats()
    assert isinstance(before, pgpool.PoolStats)
    with pytest.raises(AttributeError):
        before.idle = 5  # type: ignore[misc]
    conn = pool.getconn()
    assert (before.idle, before.in_use, before.checkouts) == (1, 0, 0)  # did not move
    after = pool.stats()
    assert (after.idle, after.in_use, after.checkouts) == (0, 1, 1)
    pool.putconn(conn)


def test_stats_counters_match_what_happened(pools: Pools) -> None:
    pool = pools.threaded(1, 3, name="counts")
    s = pool.stats()
    assert (s.name, s.minconn, s.maxconn) == ("counts", 1, 3)
    assert (s.idle, s.in_use, s.connecting, s.waiting, s.size) == (1, 0, 0, 0, 1)
    assert (s.connections_opened, s.checkouts, s.connections_closed) == (1, 0, 0)

    a, b, c = pool.getconn(), pool.getconn(), pool.getconn("k")
    assert pool.getconn("k") is c  # a sticky repeat counts as a checkout
    s = pool.stats()
    assert (s.idle, s.in_use, s.size, s.connections_opened, s.checkouts) == (0, 3, 3, 3, 4)

    with pytest.raises(pgpool.PoolTimeout):
        pool.getconn(timeout=0)
    s = pool.stats()
    # b and c queued while the connector opened their connections: two waits
    assert (s.timeouts, s.waits, s.checkouts) == (1, 2, 4)

    pool.putconn(a)
    pool.putconn(b, close=True)
    c.close()
    pool.putconn(c)  # a connection closed by its user is dropped
    s = pool.stats()
    assert (s.idle, s.in_use, s.size) == (1, 0, 1)
    assert (s.connections_closed, s.broken_returns) == (2, 1)
    assert (s.connect_errors, s.idle_reaped, s.expired, s.leases_reclaimed) == (0, 0, 0, 0)
    assert s.failed_checks == 0

    pool.closeall()
    s = pool.stats()
    assert (s.idle, s.in_use, s.size, s.connections_closed) == (0, 0, 0, 3)


# -- repr ----------------------------------------------------------------------------------


def test_repr_shows_counts_and_never_the_password(pools: Pools, dsn: str) -> None:
    # The embedded server trusts local users, so the password is sent but not needed.
    pool = pools.threaded(1, 3, dsn, name="shop", password="hunter2-secret")
    assert repr(pool) == (
        "<ThreadedConnectionPool 'shop' [idle 1, in use 0, connecting 0, waiting 0 | min 1, max 3]>"
    )
    a, b = pool.getconn(), pool.getconn()
    assert repr(pool) == (
        "<ThreadedConnectionPool 'shop' [idle 0, in use 2, connecting 0, waiting 0 | min 1, max 3]>"
    )
    pool.putconn(a)
    assert repr(pool) == (
        "<ThreadedConnectionPool 'shop' [idle 1, in use 1, connecting 0, waiting 0 | min 1, max 3]>"
    )
    pool.putconn(b)
    pool.closeall()
    assert repr(pool) == "<ThreadedConnectionPool 'shop' [closed | min 1, max 3]>"
    assert "hunter2" not in repr(pool)


def test_repr_of_simple_pool(pools: Pools) -> None:
    pool = pools.simple(0, 2, name="s")
    assert repr(pool) == (
        "<SimpleConnectionPool 's' [idle 0, in use 0, connecting 0, waiting 0 | min 0, max 2]>"
    )


# -- pool.connection() ---------------------------------------------------------------------


def test_connection_context_commits_on_success(pools: Pools, dsn: str, table: str) -> None:
    pool = pools.threaded(0, 1)
    with pool.connection() as conn:
        assert isinstance(conn, psycopg2.extensions.connection)
        with conn.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES (1, 'kept')")
    assert table_rows(dsn, table) == [(1, "kept")]
    s = pool.stats()
    assert (s.in_use, s.idle, s.broken_returns) == (0, 1, 0)


def test_connection_context_rolls_back_on_exception(pools: Pools, dsn: str, table: str) -> None:
    pool = pools.threaded(0, 1)
    with pytest.raises(ZeroDivisionError), pool.connection() as conn:
        with conn.cursor() as cursor:
            cursor.execute(f"INSERT INTO {table} VALUES (1, 'lost')")
        1 / 0  # noqa: B018
    assert table_rows(dsn, table) == []
    s = pool.stats()
    assert (s.in_use, s.idle) == (0, 1)
    with pool.connection() as again:
        assert again is conn
        assert again.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def test_connection_context_returns_after_a_failed_statement(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    with (
        pytest.raises(psycopg2.errors.UndefinedTable),
        pool.connection() as conn,
        conn.cursor() as cursor,
    ):
        cursor.execute("SELECT * FROM no_such_table_here")
    assert pool.stats().in_use == 0
    with pool.connection() as conn:
        assert select_one(conn) == 1


def test_connection_context_when_commit_fails(pools: Pools, dsn: str) -> None:
    table = make_table(dsn, "id int UNIQUE DEFERRABLE INITIALLY DEFERRED")
    try:
        pool = pools.threaded(0, 1)
        with (
            pytest.raises(psycopg2.errors.UniqueViolation),
            pool.connection() as conn,
            conn.cursor() as cursor,
        ):
            cursor.execute(f"INSERT INTO {table} VALUES (1), (1)")  # checked at COMMIT
        assert table_rows(dsn, table) == []
        s = pool.stats()
        assert (s.in_use, s.idle) == (0, 1)
        with pool.connection(timeout=0) as conn:
            assert select_one(conn) == 1
    finally:
        pools.close()  # before the drop: a connection left in a transaction holds a lock
        drop_table(dsn, table)


def test_connection_context_when_user_closes_the_connection(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    with pool.connection() as conn:
        conn.close()
    s = pool.stats()
    assert (s.in_use, s.idle, s.size, s.broken_returns) == (0, 0, 0, 1)
    with pool.connection(timeout=0) as conn:
        assert select_one(conn) == 1


def test_connection_context_when_pool_closed_inside(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    with pool.connection() as conn:
        pool.closeall()
    assert conn.closed
    assert pool.closed


def test_connection_context_on_closed_pool(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    pool.closeall()
    with pytest.raises(pgpool.PoolClosed), pool.connection():
        pass  # pragma: no cover


# -- the pool as a context manager -------------------------------------------------------------


def test_pool_as_context_manager(dsn: str) -> None:
    app = unique_app_name()
    with pgpool.ThreadedConnectionPool(
        1, 2, dsn, application_name=app, maintenance_interval=None
    ) as pool:
        assert isinstance(pool, pgpool.ThreadedConnectionPool)
        held = pool.getconn()
        assert select_one(held) == 1
    assert pool.closed
    assert held.closed  # closeall closes checked-out connections too


def test_pool_context_manager_closes_on_exception(dsn: str) -> None:
    with (
        pytest.raises(KeyError),
        pgpool.SimpleConnectionPool(1, 2, dsn, maintenance_interval=None) as pool,
    ):
        raise KeyError("boom")
    assert pool.closed


def test_pool_context_manager_tolerates_closeall_inside(dsn: str) -> None:
    with pgpool.ThreadedConnectionPool(0, 1, dsn, maintenance_interval=None) as pool:
        pool.closeall()
    assert pool.closed


# -- option names must never collide with libpq or psycopg2.connect ------------------------

CONNECT_OWN_ARGS = {"dsn", "connection_factory", "cursor_factory", "async", "async_"}


def _pool_option_names() -> list[str]:
    signature = inspect.signature(pgpool.AbstractConnectionPool.__init__)
    return [
        p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY
    ]


def test_pool_options_are_the_keyword_only_parameters() -> None:
    fields = set(pgpool.PoolOptions._fields) - {"minconn", "maxconn"}
    # `open` says whether the constructor opens the pool; it is no setting of the pool.
    assert set(_pool_option_names()) - {"open"} == fields
    # The two pool classes take the same options (they pass **kwargs through).
    for cls in (pgpool.ThreadedConnectionPool, pgpool.SimpleConnectionPool):
        params = inspect.signature(cls.__init__).parameters
        assert list(params)[:3] == ["self", "minconn", "maxconn"]


def test_libpq_rejects_an_unknown_parameter() -> None:
    # The premise of the next test: parse_dsn knows libpq's parameter list.
    assert parse_dsn("application_name=1") == {"application_name": "1"}
    with pytest.raises(psycopg2.ProgrammingError):
        parse_dsn("no_such_libpq_param=1")


@pytest.mark.parametrize("name", _pool_option_names())
def test_pool_option_is_not_a_libpq_parameter(name: str) -> None:
    with pytest.raises(psycopg2.ProgrammingError, match="invalid dsn"):
        parse_dsn(f"{name}=1")
    assert name not in CONNECT_OWN_ARGS

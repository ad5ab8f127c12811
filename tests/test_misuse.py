"""Misuse: bad options are refused up front, naming the option; bad calls raise PoolError
subclasses with clear messages and leave the pool exactly as it was."""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Callable, Iterator
from typing import Any

import psycopg2
import psycopg2.pool
import pytest
from support import Pools, assert_serves_maxconn, pools_fixture, select_one

import pgpool

Pool = pgpool.ThreadedConnectionPool


@pytest.fixture
def pools(dsn: str) -> Iterator[Pools]:
    yield from pools_fixture(dsn)


# -- construction -------------------------------------------------------------------------

NAN = math.nan

# (minconn, maxconn, pool options, expected error, text the message must contain)
BAD_OPTIONS: list[tuple[Any, Any, dict[str, Any], type[Exception], str]] = [
    (3, 2, {}, ValueError, "minconn (3) must not be greater than maxconn (2)"),
    (-1, 2, {}, ValueError, "minconn must be >= 0"),
    (0, 0, {}, ValueError, "maxconn must be >= 1"),
    (0, -3, {}, ValueError, "maxconn"),
    ("1.5", 2, {}, TypeError, "minconn must be an int"),  # "1", " 1 " and 1.0 are accepted
    (0, "two", {}, TypeError, "maxconn must be an int"),
    (0, 2.5, {}, TypeError, "maxconn must be an int"),
    (True, 2, {}, TypeError, "minconn must be an int"),
    (0, True, {}, TypeError, "maxconn must be an int"),
    (None, 2, {}, TypeError, "minconn"),
    (0, 2, {"timeout": -1}, ValueError, "timeout must be >= 0"),
    (0, 2, {"timeout": NAN}, ValueError, "timeout"),
    (0, 2, {"timeout": "5"}, TypeError, "timeout must be a number of seconds"),
    (0, 2, {"timeout": True}, TypeError, "timeout"),
    (0, 2, {"max_waiting": -1}, ValueError, "max_waiting"),
    (0, 2, {"max_waiting": 1.5}, TypeError, "max_waiting"),
    (0, 2, {"max_idle": 0}, ValueError, "max_idle must be > 0"),
    (0, 2, {"max_idle": -5}, ValueError, "max_idle"),
    (0, 2, {"max_idle": NAN}, ValueError, "max_idle"),
    (0, 2, {"max_idle": "600"}, TypeError, "max_idle"),
    (0, 2, {"max_lifetime": 0}, ValueError, "max_lifetime"),
    (0, 2, {"max_lifetime": NAN}, ValueError, "max_lifetime"),
    (0, 2, {"max_lifetime": [3600]}, TypeError, "max_lifetime"),
    (0, 2, {"max_lease": 0}, ValueError, "max_lease"),
    (0, 2, {"max_lease": -1.0}, ValueError, "max_lease"),
    (0, 2, {"max_lease": "1h"}, TypeError, "max_lease"),
    (0, 2, {"health_check_after": -0.1}, ValueError, "health_check_after"),
    (0, 2, {"health_check_after": NAN}, ValueError, "health_check_after"),
    (0, 2, {"max_connecting": 0}, ValueError, "max_connecting"),
    (0, 2, {"max_connecting": 2.0}, TypeError, "max_connecting"),
    (0, 2, {"max_connecting": True}, TypeError, "max_connecting"),
    (0, 2, {"maintenance_interval": 0}, ValueError, "maintenance_interval"),
    (0, 2, {"maintenance_interval": -1}, ValueError, "maintenance_interval"),
    (0, 2, {"reconnect_timeout": 0}, ValueError, "reconnect_timeout"),
    (0, 2, {"reconnect_timeout": None}, TypeError, "reconnect_timeout"),
    (0, 2, {"reconnect_failed": "exit"}, TypeError, "reconnect_failed must be callable"),
    (0, 2, {"reset": 5}, TypeError, "reset must be callable"),
    (0, 2, {"configure": "SET x = 1"}, TypeError, "configure must be callable"),
    (0, 2, {"clock": 1.0}, TypeError, "clock must be callable"),
    (0, 2, {"connector": "psycopg2.connect"}, TypeError, "connector must be callable"),
    (0, 2, {"clock": None}, TypeError, "clock"),
    (0, 2, {"connector": None}, TypeError, "connector"),
    (0, 2, {"name": 5}, TypeError, "name must be a str"),
]


def _case_id(case: tuple[Any, Any, dict[str, Any], type[Exception], str]) -> str:
    minconn, maxconn, options, _, _ = case
    return ",".join([repr(minconn), repr(maxconn), *(f"{k}={v!r}" for k, v in options.items())])


@pytest.mark.parametrize("case", BAD_OPTIONS, ids=[_case_id(c) for c in BAD_OPTIONS])
@pytest.mark.parametrize("cls", [pgpool.ThreadedConnectionPool, pgpool.SimpleConnectionPool])
def test_bad_option_is_refused_at_construction_naming_it(
    dsn: str,
    cls: type[pgpool.AbstractConnectionPool],
    case: tuple[Any, Any, dict[str, Any], type[Exception], str],
) -> None:
    minconn, maxconn, options, error, text = case
    options = {"maintenance_interval": None, **options}
    # Refused before any connection is opened: the connector must never be called.
    connects: list[object] = []

    def connector(*args: Any, **kwargs: Any) -> Any:
        connects.append(args)
        return psycopg2.connect(*args, **kwargs)

    options.setdefault("connector", connector)
    with pytest.raises(error, match=re.escape(text)):
        pool = cls(minconn, maxconn, dsn, **options)
        pool.closeall()  # only reached when the check is missing; keeps the test clean
    assert connects == []


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": 0},
        {"timeout": 2},
        {"timeout": 0.5},
        {"max_waiting": 0},
        {"max_idle": math.inf},
        {"max_lifetime": math.inf},
        {"max_lease": None},
        {"max_lease": 0.5},
        {"health_check_after": 0},
        {"max_connecting": 1},
        {"maintenance_interval": None},
        {"reset": None, "configure": None},
        {"name": ""},
    ],
    ids=repr,
)
def test_good_options_are_accepted(pools: Pools, options: dict[str, Any]) -> None:
    pool = pools.threaded(0, 2, **options)
    assert_serves_maxconn(pool)


def test_minconn_equal_to_maxconn_is_fine(pools: Pools) -> None:
    pool = pools.threaded(2, 2)
    assert pool.stats().idle == 2
    assert_serves_maxconn(pool)


@pytest.mark.parametrize(
    ("timeout", "error", "text"),
    [
        (-1, ValueError, "timeout must be >= 0"),
        (NAN, ValueError, "timeout"),
        ("1", TypeError, "timeout must be a number of seconds"),
        (True, TypeError, "timeout"),
        ([1], TypeError, "timeout"),
    ],
    ids=repr,
)
def test_bad_per_call_timeout(
    pools: Pools, timeout: Any, error: type[Exception], text: str
) -> None:
    pool = pools.threaded(1, 2)
    with pytest.raises(error, match=re.escape(text)):
        pool.getconn(timeout=timeout)
    with pytest.raises(error, match=re.escape(text)), pool.connection(timeout=timeout):
        pass  # pragma: no cover
    s = pool.stats()
    assert (s.in_use, s.checkouts, s.timeouts) == (0, 0, 0)
    assert_serves_maxconn(pool)


# -- misuse of a working pool ----------------------------------------------------------------


def _foreign(pools: Pools) -> Any:
    return pools.connect()


def _from_other_pool(pools: Pools) -> Any:
    other = pools.threaded(0, 1)
    return other.getconn()


def _from_psycopg2_pool(pools: Pools) -> Any:
    other = pools.add(psycopg2.pool.ThreadedConnectionPool(0, 1, pools.dsn))
    return other.getconn()


@pytest.mark.parametrize(
    "make",
    [_foreign, _from_other_pool, _from_psycopg2_pool],
    ids=["plain connection", "another pgpool pool", "a psycopg2 pool"],
)
def test_putconn_of_a_stranger(pools: Pools, make: Callable[[Pools], Any]) -> None:
    pool = pools.threaded(1, 2)
    stranger = make(pools)
    with pytest.raises(pgpool.PoolError, match="not checked out from this pool"):
        pool.putconn(stranger)
    assert stranger.closed == 0  # not ours: left alone
    assert select_one(stranger) == 1
    s = pool.stats()
    assert (s.idle, s.in_use, s.connections_closed) == (1, 0, 0)
    assert_serves_maxconn(pool)


@pytest.mark.parametrize("thing", [None, "conn", 42, object()], ids=repr)
def test_putconn_of_something_that_is_no_connection(pools: Pools, thing: object) -> None:
    pool = pools.threaded(1, 2)
    with pytest.raises(pgpool.PoolError, match="not checked out from this pool"):
        pool.putconn(thing)
    assert_serves_maxconn(pool)


def test_putconn_twice(pools: Pools) -> None:
    pool = pools.threaded(0, 2)
    conn = pool.getconn()
    pool.putconn(conn)
    with pytest.raises(pgpool.PoolError, match="returned twice"):
        pool.putconn(conn)
    assert conn.closed == 0
    s = pool.stats()
    assert (s.idle, s.in_use) == (1, 0)  # still once in the pool, not twice
    a, b = pool.getconn(), pool.getconn()
    assert a is not b
    pool.putconn(a)
    pool.putconn(b)
    assert_serves_maxconn(pool)


def test_putconn_twice_with_close(pools: Pools) -> None:
    pool = pools.threaded(0, 2)
    conn = pool.getconn()
    pool.putconn(conn, close=True)
    with pytest.raises(pgpool.PoolError, match="not checked out"):
        pool.putconn(conn, close=True)
    assert pool.stats().connections_closed == 1
    assert_serves_maxconn(pool)


def test_putconn_with_the_wrong_key_changes_nothing(pools: Pools) -> None:
    # psycopg2.pool appends the connection to its idle list, *then* fails with KeyError: the
    # next two getconn calls hand the same connection to two callers. Not here.
    pool = pools.threaded(0, 2, timeout=0)
    conn = pool.getconn()
    with pytest.raises(pgpool.PoolError, match="not str 'wrong'"):
        pool.putconn(conn, key="wrong")
    other = pool.getconn()
    assert other is not conn
    with pytest.raises(pgpool.PoolTimeout):
        pool.getconn()  # conn is still checked out: nothing was handed out twice
    assert pool.stats().in_use == 2
    pool.putconn(conn)
    pool.putconn(other)
    assert_serves_maxconn(pool)


def test_putconn_with_another_callers_key(pools: Pools) -> None:
    pool = pools.threaded(0, 2)
    a = pool.getconn("a")
    b = pool.getconn("b")
    with pytest.raises(pgpool.PoolError, match="checked out with key str 'a', not str 'b'"):
        pool.putconn(a, key="b")
    assert pool.getconn("a") is a and pool.getconn("b") is b  # both keys intact
    pool.putconn(a, key="a")
    pool.putconn(b, key="b")
    assert_serves_maxconn(pool)


def test_putconn_with_a_key_for_an_unkeyed_checkout(pools: Pools) -> None:
    pool = pools.threaded(0, 1)
    conn = pool.getconn()
    with pytest.raises(pgpool.PoolError, match="checked out with key None, not int 0"):
        pool.putconn(conn, key=0)
    pool.putconn(conn)
    assert_serves_maxconn(pool)


def test_unhashable_key(pools: Pools) -> None:
    pool = pools.threaded(1, 2)
    with pytest.raises(TypeError, match="unhashable"):
        pool.getconn(key=["not", "hashable"])  # type: ignore[arg-type]
    assert_serves_maxconn(pool)


def test_misuse_does_not_disturb_other_callers_connections(pools: Pools) -> None:
    pool = pools.threaded(0, 3, timeout=0)
    a, b = pool.getconn(), pool.getconn("k")
    with pytest.raises(pgpool.PoolError):
        pool.putconn(b, key="x")
    with pytest.raises(pgpool.PoolError):
        pool.putconn(object())
    assert pool.getconn("k") is b
    assert select_one(a) == 1 and select_one(b) == 1
    pool.putconn(a)
    pool.putconn(b)
    assert_serves_maxconn(pool)


# -- a closed pool ---------------------------------------------------------------------------


def test_getconn_after_closeall(pools: Pools) -> None:
    pool = pools.threaded(1, 2, name="gone")
    pool.closeall()
    calls: list[Callable[[], object]] = [
        pool.getconn,
        functools.partial(pool.getconn, "k"),
        functools.partial(pool.getconn, timeout=5),
    ]
    for call in calls:
        with pytest.raises(pgpool.PoolClosed, match=r"connection pool is closed.*'gone'"):
            call()
    assert pool.stats().checkouts == 0


def test_putconn_after_closeall(pools: Pools) -> None:
    pool = pools.threaded(1, 2)
    conn = pool.getconn()
    pool.closeall()
    assert conn.closed
    with pytest.raises(pgpool.PoolClosed, match="closed"):
        pool.putconn(conn)
    with pytest.raises(pgpool.PoolClosed):
        pool.putconn(conn, close=True)


def test_closeall_twice(pools: Pools) -> None:
    pool = pools.threaded(1, 2)
    pool.closeall()
    with pytest.raises(pgpool.PoolClosed, match="connection pool is closed"):
        pool.closeall()
    assert pool.closed


def test_closed_pool_still_reports(pools: Pools) -> None:
    pool = pools.threaded(1, 2, name="dead")
    pool.closeall()
    s = pool.stats()
    assert (s.idle, s.in_use, s.size, s.connections_closed) == (0, 0, 0, 1)
    assert repr(pool) == "<ThreadedConnectionPool 'dead' [closed | min 1, max 2]>"
    pool.maintain()  # a no-op, not an error


def test_closed_and_exhausted_errors_are_psycopg2_pool_errors(pools: Pools) -> None:
    # Code written for psycopg2.pool catches psycopg2.pool.PoolError: it still works.
    pool = pools.threaded(0, 1, timeout=0)
    held = pool.getconn()
    with pytest.raises(psycopg2.pool.PoolError) as exhausted:
        pool.getconn()
    assert type(exhausted.value) is pgpool.PoolTimeout
    pool.putconn(held)
    pool.closeall()
    with pytest.raises(psycopg2.pool.PoolError) as closed:
        pool.getconn()
    assert type(closed.value) is pgpool.PoolClosed

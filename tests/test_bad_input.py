"""Hypothesis-generated arguments for every public entry point.

Whatever a caller passes, the pool either accepts it or refuses it with TypeError,
ValueError or a PoolError whose message names what was wrong; and its bookkeeping is intact
afterwards. Pure pool logic, so the connections are `FakeConnection`s (tests/fakes.py),
except where psycopg2.pool is the reference: those few cases use the real server.

Sizes are lenient where psycopg2.pool's `int()` is unambiguous ("4", " 4 ", 4.0); durations
of any size (10**400) are refused like any other value out of range, never with a bare
OverflowError.
"""

from __future__ import annotations

import math
import re
import threading
import time
from typing import Any

import psycopg2.pool
import pytest
from fakes import FakeServer
from hypothesis import given, settings
from hypothesis import strategies as st
from support import backend_count, unique_app_name

import pgpool

# Anything a caller might pass by mistake, and the values that sit on the edges.
anything = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.just(object()),
    # Beyond float's range. (10**5000, beyond what repr() prints, is in explicit tests below:
    # Hypothesis cannot print it either.)
    st.sampled_from([10**400, -(10**400)]),
)

SECONDS_OPTIONS = [
    "timeout",
    "max_idle",
    "max_lifetime",
    "max_lease",
    "health_check_after",
    "maintenance_interval",
    "reconnect_timeout",
]

OPTIONS = [
    "timeout",
    "max_waiting",
    "max_idle",
    "max_lifetime",
    "max_lease",
    "health_check_after",
    "max_connecting",
    "maintenance_interval",
    "reconnect_timeout",
    "reconnect_failed",
    "reset",
    "configure",
    "name",
    "clock",
    "connector",
]


def _new_pool(server: FakeServer, **options: Any) -> pgpool.ThreadedConnectionPool:
    options.setdefault("connector", server.connect)
    options.setdefault("maintenance_interval", None)
    return pgpool.ThreadedConnectionPool(0, 2, **options)


def _still_works(pool: pgpool.AbstractConnectionPool) -> None:
    with pool._lock:
        pool._state.check_invariants()
    conns = [pool.getconn(timeout=0) for _ in range(pool.maxconn)]
    assert len({id(c) for c in conns}) == pool.maxconn
    for conn in conns:
        pool.putconn(conn)
    s = pool.stats()
    assert (s.in_use, s.connecting, s.waiting) == (0, 0, 0)


class Index:
    """An integer type that is not an int (like numpy.int64): it has `__index__`."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Index({self.value})"


def expected_size(value: Any) -> int | None:
    """What a size means, or None where it must be refused: psycopg2.pool's `int(value)`,
    where that is unambiguous. A str counts when int() takes it; a float when it is whole."""
    if isinstance(value, bool):
        return None  # True is an int to Python, but as a size it is a mistake
    if isinstance(value, int):
        return value
    if isinstance(value, Index):
        return value.value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value == int(value) else None
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _spelled(n: int) -> st.SearchStrategy[Any]:
    """`n` as psycopg2.pool accepts it: int, float, an integer type, a str with sign and spaces."""
    space = st.sampled_from(["", " ", "  ", "\t", "\n"])
    sign = st.sampled_from(["", "+"] if n >= 0 else [""])
    text = st.builds(lambda a, s, b: f"{a}{s}{n}{b}", space, sign, space)
    return st.one_of(st.just(n), st.just(float(n)), st.just(Index(n)), text)


small_size = st.integers(min_value=-3, max_value=8).flatmap(_spelled)
# minconn connections are opened by the constructor: keep it small when it is a valid size.
small_or_wrong = st.one_of(
    small_size,
    anything.filter(lambda v: (expected_size(v) or 0) <= 8),
)


@settings(max_examples=300, deadline=None)
@given(minconn=small_or_wrong, maxconn=st.one_of(small_size, anything))
def test_sizes_are_accepted_or_refused_by_name(minconn: Any, maxconn: Any) -> None:
    server = FakeServer()
    threads = set(threading.enumerate())  # a closed pool's thread may still be ending
    low, high = expected_size(minconn), expected_size(maxconn)
    try:
        pool = pgpool.ThreadedConnectionPool(
            minconn, maxconn, connector=server.connect, maintenance_interval=None
        )
    except (TypeError, ValueError) as error:
        assert "minconn" in str(error) or "maxconn" in str(error)
        assert len(str(error)) < 300  # a 5000-digit int is not printed in full
        assert low is None or high is None or not 0 <= low <= high or high < 1
        # Refused before anything was made: no connection, no thread.
        assert server.opened == 0
        assert set(threading.enumerate()) <= threads
        return
    try:
        assert low is not None and high is not None and 0 <= low <= high
        assert (pool.minconn, pool.maxconn) == (low, high)
        assert type(pool.minconn) is int and type(pool.maxconn) is int
        assert pool.stats().idle == low
    finally:
        pool.closeall()


@pytest.mark.parametrize(
    ("minconn", "maxconn", "sizes"),
    [
        ("1", "3", (1, 3)),
        (" 2 ", "\t4\n", (2, 4)),
        ("+1", 2.0, (1, 2)),
        (0.0, "1", (0, 1)),
        (Index(1), Index(2), (1, 2)),
    ],
    ids=repr,
)
def test_sizes_from_the_environment_work_as_in_psycopg2(
    dsn: str, minconn: Any, maxconn: Any, sizes: tuple[int, int]
) -> None:
    """`Pool(os.environ["DB_MIN"], ...)` works in psycopg2.pool, so it works here, with the
    same sizes; and the pool opens `minconn` real connections."""
    app = unique_app_name("sizes")
    reference = psycopg2.pool.ThreadedConnectionPool(minconn, maxconn, dsn)
    try:
        assert (reference.minconn, reference.maxconn) == sizes
    finally:
        reference.closeall()
    pool = pgpool.ThreadedConnectionPool(
        minconn, maxconn, dsn, application_name=app, maintenance_interval=None
    )
    try:
        assert (pool.minconn, pool.maxconn) == sizes
        assert backend_count(dsn, app) == sizes[0]
        conns = [pool.getconn(timeout=0) for _ in range(sizes[1])]
        with pytest.raises(pgpool.PoolTimeout):
            pool.getconn(timeout=0)
        for conn in conns:
            pool.putconn(conn)
    finally:
        pool.closeall()


@pytest.mark.parametrize(
    ("minconn", "maxconn", "named"),
    [
        (2.7, 3, "minconn"),  # int() would make it 2: is that what was meant?
        (1, "two", "maxconn"),
        (1, "2.0", "maxconn"),  # int("2.0") fails in psycopg2.pool too
        (True, 3, "minconn"),
        (1, None, "maxconn"),
        (1, math.inf, "maxconn"),
        (math.nan, 2, "minconn"),
        ("", 2, "minconn"),
        (1, [2], "maxconn"),
    ],
    ids=repr,
)
def test_ambiguous_sizes_are_refused_and_leave_nothing_behind(
    dsn: str, minconn: Any, maxconn: Any, named: str
) -> None:
    app = unique_app_name("sizes")
    threads = set(threading.enumerate())  # a closed pool's thread may still be ending
    with pytest.raises(TypeError, match=f"^{named} must be an int .*, got "):
        pgpool.ThreadedConnectionPool(minconn, maxconn, dsn, application_name=app)
    assert backend_count(dsn, app) == 0
    assert set(threading.enumerate()) <= threads


@pytest.mark.parametrize("huge", [10**400, 10**5000], ids=["10**400", "10**5000"])
@pytest.mark.parametrize("option", SECONDS_OPTIONS)
def test_a_duration_beyond_float_is_out_of_range_not_an_overflow(option: str, huge: int) -> None:
    server = FakeServer()
    bound = ">= 0" if option in ("timeout", "health_check_after") else "> 0"
    with pytest.raises(ValueError, match=re.escape(f"{option} must be {bound} seconds")) as caught:
        _new_pool(server, **{option: huge})
    assert len(str(caught.value)) < 200
    assert server.opened == 0


@pytest.mark.parametrize("option", SECONDS_OPTIONS)
def test_a_duration_of_inf_means_no_limit(option: str) -> None:
    server = FakeServer()
    pool = _new_pool(server, **{option: math.inf})
    try:
        _still_works(pool)
    finally:
        pool.closeall()


@pytest.mark.parametrize("value", [math.inf, math.nan, -math.inf], ids=repr)
@pytest.mark.parametrize("option", ["max_waiting", "max_connecting"])
def test_a_count_option_refuses_inf_and_nan_by_name(option: str, value: float) -> None:
    with pytest.raises(TypeError, match=f"^{option} must be an int, got float"):
        _new_pool(FakeServer(), **{option: value})


@pytest.mark.parametrize("option", ["max_waiting", "max_connecting"])
def test_a_count_option_beyond_float_is_just_a_large_count(option: str) -> None:
    pool = _new_pool(FakeServer(), **{option: 10**400})  # ints have no overflow: no limit
    try:
        _still_works(pool)
    finally:
        pool.closeall()


class _Unprintable(float):
    """A number whose repr() raises: the message still names the option and the type."""

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class _Opaque:
    def __repr__(self) -> str:  # pragma: no cover - the point is that it is never called
        raise AssertionError("an argument of unknown type was printed")


def test_an_unprintable_value_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"^timeout .* _Unprintable whose repr\(\) failed"):
        _new_pool(FakeServer(), timeout=_Unprintable(-1.0))


def test_an_object_of_unknown_type_is_named_by_its_type_not_printed() -> None:
    """Its repr could hold anything (a settings object with the password): not shown."""
    with pytest.raises(TypeError, match=r"^timeout must be a number of seconds, got _Opaque$"):
        _new_pool(FakeServer(), timeout=_Opaque())


@pytest.mark.parametrize(
    "timeout",
    [10**400, -(10**400), 10**5000, math.nan, -math.inf],
    ids=["10**400", "-10**400", "10**5000", "nan", "-inf"],
)
def test_getconn_timeout_beyond_float_is_refused_and_loses_nothing(timeout: Any) -> None:
    server = FakeServer()
    pool = _new_pool(server)
    try:
        with pytest.raises(ValueError, match=r"^timeout must be >= 0 seconds"):
            pool.getconn(timeout=timeout)
        with (
            pytest.raises(ValueError, match=r"^timeout must be >= 0 seconds"),
            pool.connection(timeout=timeout),
        ):
            pass  # pragma: no cover - never entered
        _still_works(pool)
        conn = pool.getconn(timeout=math.inf)  # inf: wait as long as it takes
        pool.putconn(conn)
    finally:
        pool.closeall()


@pytest.mark.timeout(120)
@settings(max_examples=400, deadline=None)
@given(option=st.sampled_from(OPTIONS), value=anything)
def test_each_option_is_accepted_or_refused_by_name(option: str, value: Any) -> None:
    server = FakeServer()
    try:
        pool = _new_pool(server, **{option: value})
    except (TypeError, ValueError) as error:
        assert option in str(error), f"{error!r} does not name {option}"
        return
    try:
        if option not in ("clock", "connector", "reset", "configure"):
            _still_works(pool)
    finally:
        pool.closeall()


@settings(max_examples=200, deadline=None)
@given(timeout=anything)
def test_getconn_timeout_is_accepted_or_refused_and_loses_nothing(timeout: Any) -> None:
    server = FakeServer()
    pool = _new_pool(server)
    try:
        try:
            conn = pool.getconn(timeout=timeout)
        except (TypeError, ValueError) as error:
            assert "timeout" in str(error)
        except pgpool.PoolTimeout:
            # Accepted, but shorter than the background connector's connect: the empty
            # pool's caller timed out, as it should (timeout=0 still connects inline).
            assert 0 < timeout < 1, timeout
            while pool.stats().connecting:  # the connect it asked for lands in the idle stack
                time.sleep(0.001)
        else:
            assert not (isinstance(timeout, float) and math.isnan(timeout))
            pool.putconn(conn)
        _still_works(pool)
    finally:
        pool.closeall()


@settings(max_examples=200, deadline=None)
@given(conn=anything, key=anything, close=anything)
def test_putconn_of_anything_else_is_refused_and_changes_nothing(
    conn: Any, key: Any, close: Any
) -> None:
    server = FakeServer()
    pool = _new_pool(server)
    try:
        held = pool.getconn()
        before = pool.stats()
        try:
            pool.putconn(conn, key=key, close=close)
        except pgpool.PoolError as error:
            assert "pool" in str(error)
        except TypeError:
            pass  # an unhashable key: refused by Python before the pool could look
        else:
            pytest.fail(f"putconn({conn!r}) of a stranger was accepted")
        assert pool.stats() == before
        pool.putconn(held)
        _still_works(pool)
    finally:
        pool.closeall()


def test_a_connector_that_is_not_psycopg2_gets_a_clear_type_error(dsn: str) -> None:
    """psycopg 3's connect is the likeliest mistake: it fails at the first connect, naming
    what was expected, instead of with an AttributeError ('readonly') much later."""
    psycopg = pytest.importorskip("psycopg")
    opened: list[Any] = []

    def psycopg3(*args: Any, **kwargs: Any) -> Any:
        opened.append(psycopg.connect(*args, **kwargs))
        return opened[-1]

    with pytest.raises(TypeError, match=r"not a psycopg2 connection.*psycopg_pool"):
        pgpool.ThreadedConnectionPool(1, 2, dsn, connector=psycopg3)
    pool = pgpool.SimpleConnectionPool(0, 2, dsn, connector=psycopg3)
    with pytest.raises(TypeError, match=r"psycopg\.Connection"):
        pool.getconn()
    stats = pool.stats()
    assert (stats.size, stats.connect_errors) == (0, 1)  # the slot is free again
    assert opened and all(conn.closed for conn in opened)  # nothing left open
    pool.closeall()


@pytest.mark.parametrize(
    "name",
    [
        "host=db.example user=app password=hunter2",
        "password=hunter2",
        "postgresql://app:hunter2@db.example/app",
        " POSTGRES://app:hunter2@db.example/app",
    ],
    ids=["keyvalue", "one-pair", "postgresql-uri", "postgres-uri"],
)
def test_a_name_that_looks_like_a_connection_string_is_refused_unquoted(name: str) -> None:
    """A DSN passed as `name=` would be shown in every repr, log line and error: refused at
    construction, by the option's name, without the value (it may hold a password)."""
    for cls in (pgpool.ThreadedConnectionPool, pgpool.SimpleConnectionPool):
        with pytest.raises(ValueError, match=r"^name must not look like a connection string") as e:
            cls(0, 2, connector=FakeServer().connect, name=name)
        assert "hunter2" not in str(e.value) and "db.example" not in str(e.value)


@pytest.mark.parametrize("name", ["orders", "worker-1", "orders db", "api:reads", "pgpool/x"])
def test_an_ordinary_name_is_kept(name: str) -> None:
    pool = _new_pool(FakeServer(), name=name)
    try:
        assert pool.name == name and repr(name) in repr(pool)
        _still_works(pool)
    finally:
        pool.closeall()

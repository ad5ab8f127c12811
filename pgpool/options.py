"""`PoolOptions`: the pool's own settings, validated once, up front.

A pool is constructed as `Pool(minconn, maxconn, *args, **kwargs)`, exactly like
psycopg2.pool: `args` and `kwargs` go to `psycopg2.connect` unchanged. pgpool's own
options are keyword-only arguments of the constructor, so they never reach libpq. Their
names are chosen so that none of them is a libpq connection parameter or an argument of
`psycopg2.connect` (`connection_factory`, `cursor_factory`, `async`): a test checks it.

Every check (`check_options`) raises at construction, naming the option and the bad value,
so a typo never survives until the first request under load.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
import re
import time
from collections.abc import Callable
from typing import Any, NamedTuple, SupportsIndex

import psycopg2

Clock = Callable[[], float]
Connector = Callable[..., Any]
ConnCallback = Callable[[Any], object]
PoolCallback = Callable[[Any], object]  # called with the pool itself


class PoolOptions(NamedTuple):
    """The settings of one pool: the constructor's keyword options (the options table of
    the README and the API reference says what each means).

    The pool builds it from its keyword arguments and checks it with `check_options`; it is
    exported so the options can be read and introspected (`PoolOptions._fields`), not to be
    passed to a pool. A `NamedTuple`, so it is frozen (a pool's `resize` makes a new one)
    and costs `import pgpool` no `dataclasses` module.
    """

    # The import cost is measured by benchmarks/imports.py.

    minconn: int
    maxconn: int
    timeout: float = 30.0  # seconds getconn waits for a connection; 0 fails at once
    max_waiting: int = 0  # callers allowed to queue in getconn; 0 means no limit
    max_idle: float = 600.0  # idle connections above minconn are closed after this long
    max_lifetime: float = 3600.0  # a connection is replaced after this long (minus jitter)
    max_lease: float | None = None  # a checkout longer than this is a leak: reclaimed
    health_check_after: float = 0.5  # idle longer than this -> ping before handing out
    max_connecting: int = 2  # connects in flight at once: stops a spike opening maxconn
    maintenance_interval: float | None = 1.0  # background maintenance period; None: none
    reconnect_timeout: float = 300.0  # connects failing this long -> call reconnect_failed
    reconnect_failed: PoolCallback | None = None  # called with the pool, outside the lock
    reset: ConnCallback | None = None  # called on each connection returned to the pool
    configure: ConnCallback | None = None  # called on each new connection
    name: str = ""
    clock: Clock = time.monotonic
    connector: Connector = psycopg2.connect


def check_options(options: PoolOptions) -> PoolOptions:
    """Check every option, raising TypeError or ValueError naming it and the bad value.

    Returns the options with the sizes converted, as psycopg2.pool's `int()` does, so that
    values read from the environment keep working.
    """
    minconn = _size("minconn", options.minconn, minimum=0)
    maxconn = _size("maxconn", options.maxconn, minimum=1)
    if minconn > maxconn:
        raise ValueError(f"minconn ({minconn}) must not be greater than maxconn ({maxconn})")
    _check_seconds("timeout", options.timeout)
    _check_int("max_waiting", options.max_waiting, minimum=0)
    _check_seconds("max_idle", options.max_idle, positive=True)
    _check_seconds("max_lifetime", options.max_lifetime, positive=True)
    if options.max_lease is not None:
        _check_seconds("max_lease", options.max_lease, positive=True)
    _check_seconds("health_check_after", options.health_check_after)
    _check_int("max_connecting", options.max_connecting, minimum=1)
    if options.maintenance_interval is not None:
        _check_seconds("maintenance_interval", options.maintenance_interval, positive=True)
    _check_seconds("reconnect_timeout", options.reconnect_timeout, positive=True)
    for callback in ("reset", "configure", "reconnect_failed", "clock", "connector"):
        value = getattr(options, callback)
        optional = callback in ("reset", "configure", "reconnect_failed")
        if not callable(value) and not (optional and value is None):
            raise TypeError(f"{callback} must be callable, got {type(value).__name__}")
    if not isinstance(options.name, str):
        raise TypeError(f"name must be a str, got {type(options.name).__name__}")
    if _looks_like_dsn(options.name):
        # A DSN passed as `name=` by mistake would be printed in every repr, log line and
        # error, password and all: refused, and not quoted here either.
        raise ValueError(
            "name must not look like a connection string (no '=', no postgres:// URI): it "
            "is shown in repr, logs and errors; pass the DSN as the pool's connection "
            f"argument instead, got {describe(options.name)}"
        )
    return options._replace(minconn=minconn, maxconn=maxconn)


def _looks_like_dsn(name: str) -> bool:
    """True for libpq's two spellings of a connection string: `key=value` pairs, or a URI."""
    return "=" in name or name.strip().lower().startswith(("postgres://", "postgresql://"))


def _size(option: str, value: object, *, minimum: int) -> int:
    """`minconn`/`maxconn` as an int, accepting what psycopg2.pool's `int()` accepts unambiguously.

    psycopg2.pool applies `int()`, so `"4"` (read from the environment), `4.0` and integer
    types such as numpy's `int64` work there; they work here too. What `int()` would
    silently truncate or guess at is refused: `2.7` (is that 2 or 3?), `True` (a flag passed
    in the wrong place), `None`, `"two"`, `"2.0"`.
    """
    if isinstance(value, bool):
        pass  # refused below: an int to Python, a mistake as a size
    elif not isinstance(value, int) and isinstance(value, SupportsIndex):
        value = operator.index(value)  # an integer type (numpy.int64): exact, never truncated
    elif isinstance(value, str):
        # int() of a str takes an optionally signed decimal integer, spaces around it allowed;
        # anything else stays a str and is refused below with the usual message.
        with contextlib.suppress(ValueError):
            value = int(value)
    elif isinstance(value, float) and value.is_integer():  # False for inf and nan
        value = int(value)
    _check_int(option, value, minimum=minimum, lenient=True)
    return value  # type: ignore[return-value]  # _check_int proved it is an int


def _check_int(option: str, value: object, *, minimum: int, lenient: bool = False) -> None:
    # bool is an int subclass, but `maxconn=True` is a mistake, not a size.
    if isinstance(value, bool) or not isinstance(value, int):
        also = " (or a str or float holding one)" if lenient else ""
        raise TypeError(f"{option} must be an int{also}, got {describe(value)}")
    if value < minimum:
        raise ValueError(f"{option} must be >= {minimum}, got {describe(value)}")


def _check_seconds(option: str, value: object, *, positive: bool = False) -> float:
    """Check a duration and return it as a float (`math.inf` is allowed: no limit)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{option} must be a number of seconds, got {describe(value)}")
    bound = "> 0" if positive else ">= 0"
    try:
        seconds = float(value)
    except OverflowError:
        # An int beyond float's range (10**400): refused like any value out of range, not
        # with a bare OverflowError from deep inside the pool. math.inf means "no limit".
        seconds = math.nan
    if math.isnan(seconds) or seconds < 0 or (positive and seconds == 0):
        raise ValueError(
            f"{option} must be {bound} seconds (math.inf for no limit), got {describe(value)}"
        )
    return seconds


# Text an error message may quote: short, and without the "=" of a key=value connection
# string or the ":" of a URI, so it cannot be one ("two", "2.0", " 4 ", "worker-1").
_QUOTABLE = re.compile(r"[\w\s.+\-]{0,40}")


def describe(value: object) -> str:
    """`value` for an error message: its type, and its repr when that is safe and short.

    A caller's argument in the wrong place is often the connection string: sizes and DSN
    swapped (`Pool(dsn, 1, 10)`), or a settings object passed whole. Its text may hold a
    password, and an error message ends up in logs and error trackers. So only numbers, None
    and short text that cannot be a connection string are quoted; any other text is
    described by its length, and any other object by its type alone.
    """
    if value is None:
        return "None"
    kind = type(value).__name__
    if isinstance(value, str | bytes | bytearray):
        if isinstance(value, str) and _QUOTABLE.fullmatch(value):
            return f"{kind} {value!r}"
        return f"{kind} of length {len(value)} (not shown: it may be a connection string)"
    if not isinstance(value, numbers.Number):
        return kind  # its repr could be anything: a dict of connection settings, say
    try:
        text = repr(value)
    except Exception:  # an int too long to print (sys.get_int_max_str_digits), a broken repr
        if isinstance(value, int):
            return f"{kind} of {value.bit_length()} bits"
        return f"{kind} whose repr() failed"
    return f"{kind} {text}" if len(text) <= 80 else f"{kind} {text[:60]}...({len(text)} characters)"


def check_timeout(timeout: object) -> float:
    """Validate a per-call `timeout` argument of getconn/connection()."""
    return _check_seconds("timeout", timeout)

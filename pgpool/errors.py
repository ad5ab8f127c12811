"""The pool's exceptions: one base, a few precise subclasses.

`PoolError` subclasses `psycopg2.pool.PoolError`, so code written for psycopg2.pool that
catches its error keeps working after switching the import. Errors that come from the
server or the network are *not* wrapped: a failed connect reaches the caller as the
driver's own `psycopg2.OperationalError`.
"""

from __future__ import annotations

import psycopg2.pool


class PoolError(psycopg2.pool.PoolError):
    """Misuse of the pool, or a pool that cannot serve: the base of every pgpool error."""


class PoolTimeout(PoolError):
    """`getconn` waited for its whole deadline and no connection became free."""


class PoolClosed(PoolError):
    """The pool was closed with `closeall()`, before or while the caller waited."""


class TooManyWaiting(PoolError):
    """`max_waiting` callers are already queued; this one is refused at once."""

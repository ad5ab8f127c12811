"""The pool's exceptions: one base, a few precise subclasses.

`PoolError` subclasses `psycopg2.pool.PoolError`, so code written for psycopg2.pool that
catches its error keeps working after switching the import. Errors that come from the
server or the network are *not* wrapped: a failed connect reaches the caller as the
driver's own `psycopg2.OperationalError`.

Two of them are also a `psycopg2.OperationalError`, the class code written for
psycopg2.pool catches to notice a database it cannot reach. With psycopg2.pool, a caller
connects itself, so while the server is down it gets that error at once. A pgpool caller
waits instead while the connector retries, and at its deadline gets `PoolTimeout`; or, when
`max_waiting` callers already wait, `TooManyWaiting` at once. Were they only `PoolError`s,
the application's "database is down" handler would silently stop firing. psycopg_pool
makes its `PoolTimeout` and `TooManyRequests` `OperationalError`s for the same reason.

`PoolClosed` is not one: psycopg2.pool raises a plain `PoolError` for a closed pool, and a
closed pool is the application's own doing (shutdown, or a bug), not a database that may
come back: a retry loop around `OperationalError` would spin on it for ever.
"""

from __future__ import annotations

import psycopg2
import psycopg2.pool


class PoolError(psycopg2.pool.PoolError):
    """Misuse of the pool, or a pool that cannot serve: the base of every pgpool error."""


class PoolTimeout(PoolError, psycopg2.OperationalError):
    """`getconn` waited for its whole deadline and no connection became free.

    Also a `psycopg2.OperationalError` (see above). When the connects were failing, the
    message names the last connect error, and `__cause__` is that driver error.
    """


class PoolClosed(PoolError):
    """The pool was closed with `closeall()`, before or while the caller waited."""


class TooManyWaiting(PoolError, psycopg2.OperationalError):
    """`max_waiting` callers are already queued; this one is refused at once.

    Also a `psycopg2.OperationalError` (see above): while the server is down, this is what
    a caller beyond the queue gets where psycopg2.pool raised the driver's error.
    """

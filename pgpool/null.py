"""NullConnectionPool: a pool that keeps no connection between requests, for PgBouncer.

Behind PgBouncer, PgBouncer keeps the server's connections; a pool in each application
process that also keeps idle connections only holds client slots of PgBouncer that nobody
uses. So psycopg_pool and SQLAlchemy offer a *null pool* (psycopg_pool's
`NullConnectionPool`, SQLAlchemy's `NullPool`), and so does pgpool, under psycopg_pool's
name. What it keeps of a pool is what still matters behind PgBouncer:

* `maxconn` still bounds the process's connections, so the process never takes more than
  its share of PgBouncer's `max_client_conn`;
* a caller that finds the pool full still queues, first come first served, for up to the
  pool's `timeout`, instead of failing at once;
* every returned connection is closed (after the pool's lock is released), which frees
  its slot, and the background connector opens a new connection for the oldest waiter,
  as in a ThreadedConnectionPool.

Since nothing ever comes back to serve a caller, one that finds room (and nobody queued
ahead of it) connects in its own thread, up to `max_connecting` at once, rather than
queueing for the connector: no hand-off between threads, and connects run side by side
instead of one at a time on the connector's thread. psycopg_pool's null pool does the same.

A connection the connector opened for a caller who gave up meanwhile goes to the next
caller in the queue if there is one; with nobody waiting it is closed at once (and counted
in `connections_closed`), rather than kept idle until `max_idle`: a null pool keeps nothing.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from .options import _size, describe
from .threaded import ThreadedConnectionPool


class NullConnectionPool(ThreadedConnectionPool):
    """A ThreadedConnectionPool that closes every connection returned to it: no idle
    connections, for use behind PgBouncer. `minconn` must be 0; `maxconn`, `timeout`,
    `max_waiting` and the other options mean what they mean for ThreadedConnectionPool."""

    _connects_inline = True  # see the module's docstring
    _keeps_idle = False  # a connection nobody waits for is closed, never kept idle

    def __init__(self, minconn: int, maxconn: int, *args: Any, **kwargs: Any) -> None:
        _check_no_minconn(minconn)
        super().__init__(minconn, maxconn, *args, **kwargs)

    def putconn(self, conn: Any = None, key: Hashable | None = None, close: bool = False) -> None:
        """Return a connection: it is closed, whatever `close` says, and its slot freed
        for the next caller. Misuse raises PoolError as in every pool."""
        super().putconn(conn, key, close=True)

    def resize(self, minconn: int, maxconn: int) -> None:
        """Change `maxconn` while the pool runs; `minconn` must stay 0."""
        _check_no_minconn(minconn)
        super().resize(minconn, maxconn)


def _check_no_minconn(minconn: object) -> None:
    # Checked before anything is opened: a pool that keeps no idle connection cannot keep
    # `minconn` of them.
    if _size("minconn", minconn, minimum=0) != 0:
        raise ValueError(
            f"minconn must be 0 for a NullConnectionPool, which keeps no idle connection, "
            f"got {describe(minconn)}"
        )

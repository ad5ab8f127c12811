"""`DBHelper`: the seed article's helper, ready to use, on a pgpool pool.

The article that started this project wraps psycopg2.pool in a small class; here it is
with a pool that blocks instead of failing, keeps its connections, and cleans them::

    from pgpool.helpers import db_helper        # was: from db_helper import db_helper

    with db_helper.get_resource() as (cursor, _):
        cursor.execute("select * from users")
        for record in cursor.fetchall():
            print(record["name"])               # rows are dicts (RealDictCursor)

The module-level `db_helper` connects with the DSN in the `PGPOOL_DSN` environment variable
(or libpq's own PG* variables when it is unset). Make your own for anything else:
`DBHelper("postgresql://app@db/app", minconn=1, maxconn=3)`.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from psycopg2.extensions import connection as Connection
from psycopg2.extensions import cursor as Cursor

from .threaded import ThreadedConnectionPool


class DBHelper:
    """A lazily created pool behind a context manager that yields `(cursor, conn)`.

    The pool is created on first use (so importing costs nothing and a process that never
    touches the database never connects) and closed at interpreter exit.
    """

    def __init__(
        self, dsn: str | None = None, minconn: int = 1, maxconn: int = 3, **pool_options: Any
    ) -> None:
        self._dsn = dsn
        self._minconn = minconn
        self._maxconn = maxconn
        self._pool_options = pool_options
        self._connection_pool: ThreadedConnectionPool | None = None
        self._lock = threading.Lock()  # two threads' first use must not make two pools
        # One exit hook for the helper's whole life, however often it re-creates its pool
        # (it does after a shutdown): one per pool would pile up, each keeping it alive.
        self._exit_hook_registered = False
        _helpers.add(self)

    @property
    def pool(self) -> ThreadedConnectionPool:
        """The pool, created on first use."""
        with self._lock:
            if self._connection_pool is None or self._connection_pool.closed:
                dsn = self._dsn if self._dsn is not None else os.environ.get("PGPOOL_DSN", "")
                self._connection_pool = ThreadedConnectionPool(
                    self._minconn, self._maxconn, dsn, **self._pool_options
                )
                if not self._exit_hook_registered:
                    atexit.register(self.shutdown_connection_pool)
                    self._exit_hook_registered = True
            return self._connection_pool

    @contextmanager
    def get_resource(self, autocommit: bool = True) -> Iterator[tuple[Cursor, Connection]]:
        """Yield `(cursor, conn)`: a RealDictCursor and its connection, in `autocommit` mode.

        The connection goes back to the pool afterwards. Without autocommit, commit yourself:
        whatever is not committed is rolled back on return, never passed to the next user.
        """
        pool = self.pool
        conn = pool.getconn()
        try:
            conn.autocommit = autocommit
            # Imported here, not at the top: psycopg2.extras costs ~5 ms, which every
            # `import pgpool` would pay (benchmarks/imports.py measures it).
            from psycopg2.extras import RealDictCursor

            cursor = conn.cursor(cursor_factory=RealDictCursor)
            try:
                yield cursor, conn
            finally:
                cursor.close()
        finally:
            pool.putconn(conn)

    def shutdown_connection_pool(self) -> None:
        """Close the pool, if it was ever created. Safe to call more than once."""
        with self._lock:
            pool, self._connection_pool = self._connection_pool, None
        if pool is not None and not pool.closed:
            # Connections still in use (a daemon thread's query at exit, say) are closed when
            # returned: closing one mid-query would wait for the query to end.
            pool.closeall(in_use=False)


# Every helper, so that a forked child gives each a new lock: the child's first use and its
# atexit hook take it, and a parent thread holding it at the fork (creating the pool) does
# not exist in the child to release it.
_helpers: weakref.WeakSet[DBHelper] = weakref.WeakSet()


def _new_locks_after_fork() -> None:
    for helper in list(_helpers):
        helper._lock = threading.Lock()


os.register_at_fork(after_in_child=_new_locks_after_fork)

db_helper = DBHelper()

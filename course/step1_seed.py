"""Step 1: the seed's pool. psycopg2.pool and the article's DBHelper, and their faults.

The pool is psycopg2's own `ThreadedConnectionPool` (one lock around each call); `DBHelper`
is the seed article's context manager around it. ``python -m course.step1_seed`` runs
the three faults: no waiting, connecting under the lock, and reconnect churn at (1, 3).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2.extensions
from psycopg2.extras import RealDictCursor
from psycopg2.pool import PoolError, ThreadedConnectionPool

SeedPool = ThreadedConnectionPool  # the pool of this step, for the properties matrix


class DBHelper:
    """The article's helper: a lazily made (1, 3) pool, a cursor per `with` block."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn  # the article hard-codes it; we take it as an argument
        self._connection_pool: ThreadedConnectionPool | None = None

    def initialize_connection_pool(self) -> None:
        self._connection_pool = ThreadedConnectionPool(1, 3, self._dsn)

    @contextmanager
    def get_resource(self, autocommit: bool = True) -> Iterator[tuple[Any, Any]]:
        if self._connection_pool is None:
            self.initialize_connection_pool()
        assert self._connection_pool is not None
        conn = self._connection_pool.getconn()
        conn.autocommit = autocommit
        cursor = conn.cursor(cursor_factory=RealDictCursor)
        try:
            yield cursor, conn
        finally:
            cursor.close()
            self._connection_pool.putconn(conn)

    def shutdown_connection_pool(self) -> None:
        if self._connection_pool is not None:
            self._connection_pool.closeall()


class CountingConnection(psycopg2.extensions.connection):
    """A connection that counts how many were opened, and can be made slow to open."""

    opened = 0
    delay = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(type(self).delay)  # a slow network, or a server under load
        super().__init__(*args, **kwargs)
        type(self).opened += 1


def fault_exhausted(dsn: str) -> str:
    """A fourth caller at a full (1, 3) pool is refused at once instead of waiting."""
    pool = ThreadedConnectionPool(1, 3, dsn)
    held = [pool.getconn() for _ in range(3)]
    try:
        pool.getconn()
        return "the fourth getconn got a connection"
    except PoolError as error:
        return f"the fourth getconn raised at once: PoolError({error})"
    finally:
        for conn in held:
            pool.putconn(conn)
        pool.closeall()


def fault_connect_under_lock(dsn: str, delay: float = 0.5) -> str:
    """While one caller connects (slowly), another caller's putconn has to wait for it."""
    pool = ThreadedConnectionPool(0, 2, dsn, connection_factory=CountingConnection)
    mine = pool.getconn()
    CountingConnection.delay = delay
    other = threading.Thread(target=pool.getconn)
    other.start()
    time.sleep(0.1)  # the other caller is now inside its connect, holding the pool's lock
    start = time.perf_counter()
    pool.putconn(mine)
    waited = time.perf_counter() - start
    other.join()
    CountingConnection.delay = 0.0
    pool.closeall()
    return f"putconn took {waited * 1000:.0f} ms behind a {delay * 1000:.0f} ms connect"


def fault_churn(dsn: str, rounds: int = 100) -> str:
    """At (1, 3), three connections out and back: two of them are closed every time."""
    CountingConnection.opened = 0
    pool = ThreadedConnectionPool(1, 3, dsn, connection_factory=CountingConnection)
    for _ in range(rounds):
        held = [pool.getconn() for _ in range(3)]
        for conn in held:
            pool.putconn(conn)
    pool.closeall()
    return f"{rounds * 3} checkouts, {CountingConnection.opened} connects (3 would do)"


def main() -> None:
    from ._common import server

    with server() as dsn:
        helper = DBHelper(dsn)
        with helper.get_resource() as (cursor, _):
            cursor.execute("SELECT 1 AS one")
            print("DBHelper works:", dict(cursor.fetchone()))
        helper.shutdown_connection_pool()
        print("1. no waiting:       ", fault_exhausted(dsn))
        print("2. connect under lock:", fault_connect_under_lock(dsn))
        print("3. churn at (1, 3):  ", fault_churn(dsn))


if __name__ == "__main__":
    main()

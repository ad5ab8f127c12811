"""Step 2: `queue.Queue` as a pool. Blocking and bounded in a few lines.

The queue holds *tokens*: a connection, or None meaning "the right to open one". It starts
with `maxconn` tokens, so at most `maxconn` connections can exist, and a caller with no
token blocks in `Queue.get` until one comes back. The queue's own lock is held only inside
get and put: we connect with no lock held. ``python -m course.step2_queue`` shows what it
lacks: a connection returned twice is handed to two callers.
"""

from __future__ import annotations

import queue
from typing import Any

import psycopg2

from ._common import PoolClosed, PoolTimeout


class QueuePool:
    def __init__(
        self, minconn: int, maxconn: int, *args: Any, timeout: float = 30.0, **kwargs: Any
    ) -> None:
        self.minconn, self.maxconn, self.timeout = minconn, maxconn, timeout
        self._args, self._kwargs = args, kwargs
        self._tokens: queue.Queue[Any] = queue.Queue()  # unbounded: put never blocks
        for _ in range(minconn):
            self._tokens.put(psycopg2.connect(*args, **kwargs))
        for _ in range(maxconn - minconn):
            self._tokens.put(None)
        self.closed = False

    def getconn(self, timeout: float | None = None) -> Any:
        if self.closed:
            raise PoolClosed("pool is closed")
        try:
            token = self._tokens.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise PoolTimeout("no connection came back in time") from None
        if token is not None:
            return token
        try:
            return psycopg2.connect(*self._args, **self._kwargs)  # no lock held here
        except BaseException:
            self._tokens.put(None)  # give the right to connect back, or the pool shrinks
            raise

    def putconn(self, conn: Any) -> None:
        # Nothing checks that `conn` is ours, or that it is not already in the queue.
        self._tokens.put(None if conn.closed else conn)

    def closeall(self) -> None:
        self.closed = True
        while True:
            try:
                token = self._tokens.get_nowait()
            except queue.Empty:
                return
            if token is not None:
                token.close()


def main() -> None:
    from ._common import server

    with server() as dsn:
        pool = QueuePool(0, 1, dsn)
        conn = pool.getconn()
        pool.putconn(conn)
        pool.putconn(conn)  # a bug in the caller: the same connection returned twice
        first, second = pool.getconn(), pool.getconn()
        print("two callers, one connection:", first is second)
        pool.putconn(first)
        pool.closeall()


if __name__ == "__main__":
    main()

"""Step 0: why pool at all. A connect costs far more than the query it serves.

`NoPool` has the pool interface and no pool: getconn opens a connection, putconn closes
it. Run ``python -m course.step0_why`` to time that against reusing one connection.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg2

from ._common import PoolClosed, select_one


class NoPool:
    """A new connection per getconn, closed by putconn. `maxconn` is not enforced."""

    def __init__(self, minconn: int, maxconn: int, *args: Any, **kwargs: Any) -> None:
        self.minconn, self.maxconn = minconn, maxconn
        self._args, self._kwargs = args, kwargs
        self.closed = False

    def getconn(self, timeout: float | None = None) -> Any:
        if self.closed:
            raise PoolClosed("pool is closed")
        return psycopg2.connect(*self._args, **self._kwargs)

    def putconn(self, conn: Any) -> None:
        conn.close()

    def closeall(self) -> None:
        self.closed = True


def measure(dsn: str, rounds: int = 200) -> tuple[float, float]:
    """Microseconds per SELECT 1: with a connect each time, and on one reused connection."""
    pool = NoPool(0, 1, dsn)
    start = time.perf_counter()
    for _ in range(rounds):
        conn = pool.getconn()
        select_one(conn)
        pool.putconn(conn)
    fresh = (time.perf_counter() - start) / rounds * 1e6
    conn = psycopg2.connect(dsn)
    start = time.perf_counter()
    for _ in range(rounds):
        select_one(conn)
    reused = (time.perf_counter() - start) / rounds * 1e6
    conn.close()
    return fresh, reused


def main() -> None:
    from ._common import server

    with server() as dsn:
        measure(dsn, 20)  # warm up: the server's caches, our imports
        fresh, reused = measure(dsn)
    print(f"connect + SELECT 1 + close: {fresh:8.0f} us per request")
    print(f"SELECT 1 on a reused conn:  {reused:8.0f} us per request")
    print(f"a pool saves {fresh - reused:.0f} us per request ({fresh / reused:.0f}x)")


if __name__ == "__main__":
    main()

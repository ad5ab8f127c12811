"""A small contention measurement: many threads, few connections, SELECT 1 each time."""

from __future__ import annotations

import threading
import time
from typing import Any

from ._common import select_one


class Psycopg2Retry:
    """psycopg2.pool's ThreadedConnectionPool in the retry loop its users must write: it
    raises "connection pool exhausted" instead of waiting, so sleep 1 ms and try again
    (the benchmarks' psycopg2 row does the same)."""

    def __init__(self, minconn: int, maxconn: int, *args: Any, **kwargs: Any) -> None:
        import psycopg2.pool

        self._pool = psycopg2.pool.ThreadedConnectionPool(minconn, maxconn, *args, **kwargs)
        self._exhausted = psycopg2.pool.PoolError

    def getconn(self, timeout: float = 30.0) -> Any:
        deadline = time.perf_counter() + timeout
        while True:
            try:
                return self._pool.getconn()
            except self._exhausted:
                if time.perf_counter() >= deadline:
                    raise
                time.sleep(0.001)

    def putconn(self, conn: Any) -> None:
        self._pool.putconn(conn)

    def closeall(self) -> None:
        self._pool.closeall()


def contention(
    pool_class: Any, dsn: str, threads: int = 8, conns: int = 2, seconds: float = 2.0
) -> str:
    """Run `threads` threads on a (conns, conns) pool for `seconds`; report q/s and waits."""
    qps, p99, worst, fewest, most = contention_numbers(pool_class, dsn, threads, conns, seconds)
    return (
        f"{qps:7.0f} q/s | wait p99 {p99 * 1000:6.1f} ms,"
        f" max {worst * 1000:6.1f} ms | fewest queries by one thread: {fewest}, most: {most}"
    )


def contention_numbers(
    pool_class: Any, dsn: str, threads: int, conns: int, seconds: float
) -> tuple[float, float, float, int, int]:
    """`contention`'s figures: q/s, p99 and longest wait (s), fewest and most queries of
    one thread."""
    pool = pool_class(conns, conns, dsn)
    stop = time.perf_counter() + seconds
    waits: list[list[float]] = [[] for _ in range(threads)]

    def work(mine: list[float]) -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            conn = pool.getconn(timeout=30)
            mine.append(time.perf_counter() - start)
            select_one(conn)
            pool.putconn(conn)

    workers = [threading.Thread(target=work, args=(w,)) for w in waits]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    pool.closeall()
    every = sorted(w for mine in waits for w in mine)
    counts = [len(mine) for mine in waits]
    p99 = every[int(len(every) * 0.99)]
    return len(every) / seconds, p99, every[-1], min(counts), max(counts)


def spike(pool_class: Any, dsn: str, callers: int = 20, delay: float = 0.1) -> str:
    """`callers` threads at once at an empty (0, callers) pool whose connects take `delay`
    seconds; each runs one SELECT 1 and returns its connection. Meanwhile one more caller,
    which already holds a connection, returns it: how long does that putconn take?"""
    import psycopg2.extensions

    opened: list[Any] = []

    class SlowConnection(psycopg2.extensions.connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            time.sleep(SlowConnection.delay)
            super().__init__(*args, **kwargs)
            opened.append(self)

        delay = 0.0

    pool = pool_class(0, callers + 1, dsn, connection_factory=SlowConnection)
    mine = pool.getconn()
    SlowConnection.delay = delay

    def work() -> None:
        conn = pool.getconn(timeout=30)
        select_one(conn)
        pool.putconn(conn)

    start = time.perf_counter()
    workers = [threading.Thread(target=work) for _ in range(callers)]
    for worker in workers:
        worker.start()
    time.sleep(delay / 2)  # the spike is now connecting
    returned = time.perf_counter()
    pool.putconn(mine)
    returned = time.perf_counter() - returned
    for worker in workers:
        worker.join()
    served = time.perf_counter() - start
    pool.closeall()
    return (
        f"{callers} callers served in {served * 1000:5.0f} ms with {len(opened) - 1} connects;"
        f" a putconn during the spike took {returned * 1000:5.1f} ms"
    )

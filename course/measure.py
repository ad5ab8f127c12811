"""A small contention measurement: many threads, few connections, SELECT 1 each time."""

from __future__ import annotations

import threading
import time
from typing import Any

from ._common import select_one


def contention(
    pool_class: Any, dsn: str, threads: int = 8, conns: int = 2, seconds: float = 2.0
) -> str:
    """Run `threads` threads on a (conns, conns) pool for `seconds`; report q/s and waits."""
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
    p99 = every[int(len(every) * 0.99)]
    return (
        f"{len(every) / seconds:7.0f} q/s | wait p99 {p99 * 1000:6.1f} ms,"
        f" max {every[-1] * 1000:6.1f} ms | fewest queries by one thread: "
        f"{min(len(mine) for mine in waits)}, most: {max(len(mine) for mine in waits)}"
    )


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

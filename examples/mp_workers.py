"""A multiprocessing worker pool with one pgpool per worker process (docs/deploying.md).

    from examples.mp_workers import run
    results = run(dsn, method="spawn")   # or "fork"

The initializer makes the pool in each worker, so it works with any start method; a
connection is never shared between processes. Each worker runs one task at a time, so a
SimpleConnectionPool of one connection is enough, and `Finalize` closes it when the
worker exits (after `close()` and `join()`; `terminate()` kills workers before it can).
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.util import Finalize
from typing import Any

import pgpool

_pool: pgpool.SimpleConnectionPool | None = None


def init_worker(dsn: str) -> None:
    global _pool
    _pool = pgpool.SimpleConnectionPool(1, 1, dsn)
    Finalize(_pool, _pool.closeall, exitpriority=10)


def task(n: int) -> tuple[int, int, int, int]:
    """Double `n` on the server; return (n, 2n, worker pid, server backend pid)."""
    assert _pool is not None, "init_worker did not run in this process"
    with _pool.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT %s * 2, pg_backend_pid()", (n,))
        doubled, backend = cur.fetchone()
    return n, doubled, os.getpid(), backend


def run(dsn: str, method: str = "spawn", processes: int = 4, items: int = 100) -> list[Any]:
    context = multiprocessing.get_context(method)
    workers = context.Pool(processes, initializer=init_worker, initargs=(dsn,))
    try:
        results = workers.map(task, range(items))
    finally:
        workers.close()  # not terminate(): let each worker exit and close its pool
        workers.join()
    return results

"""Pool-locking: threads that each hold one connection while they wait for another.

A thread that checks out a connection and, before returning it, asks for a second (a
nested transaction on a separate connection, a helper that takes its own) can deadlock
with the others: if every connection is held by a thread that waits for one more, nobody
returns anything. HikariCP's "About Pool Sizing" gives the size that makes it impossible:
with `Tn` such threads, each holding up to `Cm` connections at once, a pool of
``Tn x (Cm - 1) + 1`` always has one connection left for one thread to finish and return
what it holds. One fewer, and the deadlock is possible; pgpool's `timeout` is then the only
way out. ``python -m course.pool_locking`` runs both sizes.
"""

from __future__ import annotations

import threading
from typing import Any

import pgpool

from ._common import select_one


def nested_checkouts(
    dsn: str, threads: int, held: int, maxconn: int, timeout: float
) -> tuple[int, int]:
    """`threads` threads each take one connection, wait until all have one, then ask for
    `held - 1` more. Returns (threads served, threads whose getconn timed out)."""
    pool = pgpool.ThreadedConnectionPool(0, maxconn, dsn, timeout=timeout)
    all_hold_one = threading.Barrier(threads)
    served, timed_out = [], []

    def work() -> None:
        first = pool.getconn(timeout=30.0)  # not the timeout under test: connecting may be slow
        try:
            all_hold_one.wait(timeout=30.0)
            more: list[Any] = []
            try:
                for _ in range(held - 1):
                    more.append(pool.getconn())
                select_one(more[-1] if more else first)
                served.append(1)
            except pgpool.PoolTimeout:
                timed_out.append(1)
            finally:
                for conn in more:
                    pool.putconn(conn)
        finally:
            pool.putconn(first)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    pool.closeall()
    return len(served), len(timed_out)


def main() -> None:
    from ._common import server

    threads, held = 4, 2
    rule = threads * (held - 1) + 1
    with server() as dsn:
        for maxconn, timeout in ((rule - 1, 0.5), (rule, 10.0)):
            served, timed_out = nested_checkouts(dsn, threads, held, maxconn, timeout)
            print(
                f"{threads} threads holding up to {held} connections, maxconn {maxconn}:"
                f" {served} served, {timed_out} timed out (timeout {timeout:g} s)"
            )


if __name__ == "__main__":
    main()

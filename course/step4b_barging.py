"""Step 4b: barging, with a limit. Why pgpool serves strictly first come, first served.

Step 4 hands every returned connection to the oldest waiter. That is fair, and it costs a
wake-up per checkout: the waiter was asleep, and on a machine with two CPUs it usually
wakes on the other one. A *barging* pool lets the thread that returns a connection take it
straight back if it asks again at once, and wakes a waiter only to compete for it: fewer
wake-ups, more queries per second, and a waiter that can lose every race.

`BargingPool` barges until the oldest waiter has waited `patience` seconds, then hands
connections over in order until the queue is served (Go's `sync.Mutex` does the same,
with 1 ms, and calls it starvation mode). ``patience=0`` is step 4; ``patience=math.inf``
never stops barging. ``python -m course.step4b_barging`` measures the curve.
"""

from __future__ import annotations

import math
import time
from typing import Any

import psycopg2

from . import step4_fifo
from ._common import PoolClosed, PoolMisuse, PoolTimeout


class Waiter(step4_fifo.Waiter):
    """A queued caller, who knows since when it waits. Rung with `conn` set: served; rung
    with neither `conn` nor `error`: woken to compete for an idle connection."""

    def __init__(self, since: float) -> None:
        super().__init__()
        self.since = since


class BargingPool(step4_fifo.FifoPool):
    def __init__(
        self, minconn: int, maxconn: int, *args: Any, patience: float = 0.001, **kwargs: Any
    ) -> None:
        self.patience = patience
        self._awake = 0  # waiters woken to compete, not yet back at the lock
        super().__init__(minconn, maxconn, *args, **kwargs)

    def _starving(self, now: float) -> bool:
        """The oldest waiter has waited `patience`: no more barging (lock held)."""
        return bool(self._waiters) and now - self._waiters[0].since >= self.patience

    def _wake_one(self) -> None:
        """Wake the oldest waiter to compete for an idle connection, unless one already is
        on its way (lock held): a wake-up per return would wake the whole queue."""
        if self._idle and self._waiters and not self._awake:
            self._awake += 1
            self._waiters.popleft().ring()

    def getconn(self, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        since, woken = time.monotonic(), False
        while True:
            with self._lock:
                if woken:
                    self._awake -= 1
                if self.closed:
                    raise PoolClosed("pool is closed")
                now = time.monotonic()
                oldest = woken and (not self._waiters or since <= self._waiters[0].since)
                if self._idle and (oldest or not self._starving(now)):
                    conn = self._idle.pop()  # barging, unless we are the oldest waiter
                    self._used.add(id(conn))
                    return conn
                if self._idle:  # an older waiter starves: it goes first
                    head = self._waiters.popleft()
                    head.conn = self._idle.pop()
                    self._used.add(id(head.conn))
                    head.ring()
                if self._size < self.maxconn:
                    conn = psycopg2.connect(*self._args, **self._kwargs)  # as in step 4
                    self._size += 1
                    self._used.add(id(conn))
                    return conn
                waiter = Waiter(since)
                if woken:  # lost the race: back to the head of the queue, keeping its age
                    self._waiters.appendleft(waiter)
                else:
                    self._waiters.append(waiter)
            if not waiter.bell.acquire(timeout=max(0.0, deadline - time.monotonic())):
                with self._lock:  # timed out, unless rung just now
                    if waiter.conn is None and waiter.error is None:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
                        else:  # woken to compete, and giving up: wake the next one
                            self._awake -= 1
                            self._wake_one()
                        raise PoolTimeout("no connection came back in time")
            if waiter.error is not None:
                raise waiter.error
            if waiter.conn is not None:  # handed over in starvation mode
                return waiter.conn
            woken = True

    def putconn(self, conn: Any) -> None:
        with self._lock:
            if id(conn) not in self._used:
                raise PoolMisuse("connection is not checked out from this pool")
            if self.closed:
                self._used.remove(id(conn))
                self._size -= 1
            elif self._starving(time.monotonic()):  # hand it over, first come first served
                waiter = self._waiters.popleft()
                waiter.conn = conn
                waiter.ring()
                return
            else:  # idle: whoever asks first takes it, and the oldest waiter may compete
                self._used.remove(id(conn))
                self._idle.append(conn)
                self._wake_one()
                return
        conn.close()


# -- the measurement -------------------------------------------------------------------------

PATIENCES = (0.0, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.02, math.inf)


def main(reps: int = 3, seconds: float = 1.0) -> None:
    import functools
    import statistics

    import pgpool

    from ._common import server
    from .measure import Psycopg2Retry, contention_numbers

    threads, conns = 16, 4
    rows: list[tuple[str, Any]] = [
        (f"barging, patience {p * 1000:g} ms", functools.partial(BargingPool, patience=p))
        for p in PATIENCES
    ]
    rows += [("psycopg2 + retry loop", Psycopg2Retry), ("pgpool", pgpool.ThreadedConnectionPool)]
    print(f"{threads} threads on {conns} connections, SELECT 1, {seconds:g} s per run;")
    print(f"median of {reps} runs, the rows taking turns")
    runs: dict[str, list[tuple[float, float, float, int, int]]] = {label: [] for label, _ in rows}
    with server() as dsn:
        for _ in range(reps):
            for label, pool in rows:
                runs[label].append(contention_numbers(pool, dsn, threads, conns, seconds))
    print(f"{'':28} {'q/s':>7} {'worst wait':>11} {'fairness':>9}")
    for label, _ in rows:
        qps = statistics.median(r[0] for r in runs[label])
        worst = statistics.median(r[2] for r in runs[label])
        fair = statistics.median(r[3] / r[4] for r in runs[label])  # fewest / most queries
        print(f"{label:28} {qps:7,.0f} {worst * 1000:8.1f} ms {fair:9.2f}")


if __name__ == "__main__":
    main()

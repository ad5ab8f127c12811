"""Step 4: first come, first served. A queue of waiters, each asleep on its own lock.

A caller that must wait appends a `Waiter` to a FIFO queue and sleeps on the waiter's
"bell", a lock of its own, without holding the pool's lock. Whoever returns a connection
hands it to the first waiter *before* ringing its bell: the woken caller finds the
connection already its own and returns without taking the pool's lock again. That is
`Condition.wait` minus the re-acquire (CPython's Condition also allocates one lock per
waiter). ``python -m course.step4_fifo`` measures this against step 3.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import psycopg2

from ._common import PoolClosed, PoolMisuse, PoolTimeout


class Waiter:
    """A caller queued in getconn. Exactly one of `conn` / `error` is set before `ring`."""

    def __init__(self) -> None:
        self.bell = threading.Lock()
        self.bell.acquire()  # held means "nothing for you yet"; sleeping = acquiring it again
        self.conn: Any = None
        self.error: Exception | None = None

    def ring(self) -> None:
        self.bell.release()


class FifoPool:
    def __init__(
        self, minconn: int, maxconn: int, *args: Any, timeout: float = 30.0, **kwargs: Any
    ) -> None:
        self.minconn, self.maxconn, self.timeout = minconn, maxconn, timeout
        self._args, self._kwargs = args, kwargs
        self._lock = threading.Lock()
        self._idle: list[Any] = [psycopg2.connect(*args, **kwargs) for _ in range(minconn)]
        self._used: set[int] = set()
        self._size = minconn
        # Invariant: if anyone waits, nothing is idle (a returned connection goes to the
        # first waiter at once), so a newcomer can never overtake a waiter.
        self._waiters: deque[Waiter] = deque()
        self.closed = False

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def getconn(self, timeout: float | None = None) -> Any:
        with self._lock:
            if self.closed:
                raise PoolClosed("pool is closed")
            if self._idle:  # by the invariant, nobody is waiting
                conn = self._idle.pop()
                self._used.add(id(conn))
                return conn
            if self._size < self.maxconn:
                conn = psycopg2.connect(*self._args, **self._kwargs)  # still under the lock
                self._size += 1
                self._used.add(id(conn))
                return conn
            waiter = Waiter()
            self._waiters.append(waiter)
        if waiter.bell.acquire(timeout=self.timeout if timeout is None else timeout):
            if waiter.error is not None:  # rung: served, no need to take the pool's lock
                raise waiter.error
            return waiter.conn
        with self._lock:  # timed out; but we may have been served just now
            if waiter.conn is not None:
                return waiter.conn
            if waiter.error is not None:
                raise waiter.error
            self._waiters.remove(waiter)
        raise PoolTimeout("no connection came back in time")

    def putconn(self, conn: Any) -> None:
        with self._lock:
            if id(conn) not in self._used:
                raise PoolMisuse("connection is not checked out from this pool")
            if self.closed:
                self._used.remove(id(conn))
                self._size -= 1
            elif self._waiters:  # hand it over: it stays in _used, now the waiter's
                waiter = self._waiters.popleft()
                waiter.conn = conn
                waiter.ring()
                return
            else:
                self._used.remove(id(conn))
                self._idle.append(conn)
                return
        conn.close()

    def closeall(self) -> None:
        with self._lock:
            self.closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            for waiter in self._waiters:
                waiter.error = PoolClosed("pool closed while waiting")
                waiter.ring()
            self._waiters.clear()
        for conn in idle:
            conn.close()


def main() -> None:
    from . import step3_condition
    from ._common import server
    from .measure import contention

    with server() as dsn:
        for cls in (step3_condition.ConditionPool, FifoPool, step3_condition.ConditionPool):
            print(f"{cls.__name__:14}", contention(cls, dsn))


if __name__ == "__main__":
    main()

"""Step 3: the textbook pool. One lock, one condition variable, a deadline.

Our own bookkeeping replaces the queue's: which connections are idle, which are out, how
many exist. Callers wait on a `threading.Condition` whose predicate is "I could proceed",
with `wait_for` and a deadline. It still connects under its lock (step 5 moves that out)
and it is not first-come-first-served: ``python -m course.step3_condition`` shows why.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg2

from ._common import PoolClosed, PoolMisuse, PoolTimeout


class ConditionPool:
    def __init__(
        self, minconn: int, maxconn: int, *args: Any, timeout: float = 30.0, **kwargs: Any
    ) -> None:
        self.minconn, self.maxconn, self.timeout = minconn, maxconn, timeout
        self._args, self._kwargs = args, kwargs
        self._lock = threading.Lock()
        # Notified whenever a waiter might now proceed: a connection came back, or the pool
        # closed. Waiters re-check the predicate after every wake-up (wait_for does).
        self._can_proceed = threading.Condition(self._lock)
        self._idle: list[Any] = [psycopg2.connect(*args, **kwargs) for _ in range(minconn)]
        self._used: set[int] = set()  # id() of each connection checked out
        self._size = minconn  # idle + checked out, always <= maxconn
        self.waiting = 0  # callers asleep in wait_for (read by the tests)
        self.closed = False

    def _ready(self) -> bool:
        return self.closed or bool(self._idle) or self._size < self.maxconn

    def getconn(self, timeout: float | None = None) -> Any:
        wait = self.timeout if timeout is None else timeout
        with self._can_proceed:
            if not self._ready():
                self.waiting += 1
                try:
                    self._can_proceed.wait_for(self._ready, wait)  # releases the lock meanwhile
                finally:
                    self.waiting -= 1
            if self.closed:
                raise PoolClosed("pool is closed")
            if self._idle:
                conn = self._idle.pop()
            elif self._size < self.maxconn:
                conn = psycopg2.connect(*self._args, **self._kwargs)  # under the lock!
                self._size += 1
            else:
                raise PoolTimeout(f"no connection came back within {wait} s")
            self._used.add(id(conn))
            return conn

    def putconn(self, conn: Any) -> None:
        with self._can_proceed:
            if id(conn) not in self._used:
                raise PoolMisuse("connection is not checked out from this pool")
            self._used.remove(id(conn))
            if self.closed:
                self._size -= 1
            else:
                self._idle.append(conn)
                self._can_proceed.notify()  # wakes one waiter; anyone may still get there first
                return
        conn.close()  # after releasing the lock

    def closeall(self) -> None:
        with self._can_proceed:
            self.closed = True
            idle, self._idle = self._idle, []
            self._size -= len(idle)
            self._can_proceed.notify_all()
        for conn in idle:
            conn.close()


def main() -> None:
    import sys

    from ._common import server

    with server() as dsn:
        pool = ConditionPool(0, 1, dsn)
        conn = pool.getconn()
        served: list[Any] = []
        waiter = threading.Thread(target=lambda: served.append(pool.getconn(timeout=5)))
        waiter.start()
        while pool.waiting == 0:  # until the waiter is asleep in wait_for
            pass
        sys.setswitchinterval(1.0)  # let this thread run on, as a busy program often does
        pool.putconn(conn)  # notifies the waiter ...
        again = pool.getconn(timeout=0)  # ... but we get the lock first, and take it back
        sys.setswitchinterval(0.005)
        print("returned, asked again, got it back:", again is conn, "| waiter served:", served)
        pool.putconn(again)
        waiter.join()
        print("waiter served only after the second return:", served[0] is conn)
        pool.putconn(served[0])
        pool.closeall()


if __name__ == "__main__":
    main()

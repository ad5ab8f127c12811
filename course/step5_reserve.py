"""Step 5: reserve a slot under the lock, connect outside it, a few connects at a time.

Step 4 still connected under its lock, so one slow connect stalled every caller, even one
only returning a connection. Here the lock only *reserves* a slot (counted in `_size` and
`_connecting`); the connect runs after the lock is released, and at most `max_connecting`
run at once, so a spike of callers does not open a connection each. A waiter is served
with a connection, or with the right to open one. ``python -m course.step5_reserve``.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

import psycopg2

from . import step4_fifo
from ._common import PoolClosed, PoolMisuse, PoolTimeout


class Waiter(step4_fifo.Waiter):
    """Step 4's waiter, which may also be served with the right to open a connection."""

    def __init__(self) -> None:
        super().__init__()
        self.connect = False


class ReservePool:
    def __init__(
        self,
        minconn: int,
        maxconn: int,
        *args: Any,
        timeout: float = 30.0,
        max_connecting: int = 2,
        **kwargs: Any,
    ) -> None:
        self.minconn, self.maxconn, self.timeout = minconn, maxconn, timeout
        self.max_connecting = max_connecting
        self._args, self._kwargs = args, kwargs
        self._lock = threading.Lock()
        self._idle: list[Any] = []  # a stack: the last returned is the next handed out
        self._used: set[int] = set()
        self._size = minconn  # idle + checked out + connecting: <= maxconn at every instant
        self._connecting = 0  # connects in flight: <= max_connecting
        self._waiters: deque[Waiter] = deque()  # if anyone waits, nothing is idle
        self.closed = False
        for _ in range(minconn):
            self._to_idle(self._connect())

    # Four hooks, for step 6: open a connection, lease one, put one on the idle stack, and
    # forget one that is closed (its slot is freed). The last three run under the lock.
    def _connect(self) -> Any:
        return psycopg2.connect(*self._args, **self._kwargs)

    def _lease(self, conn: Any) -> Any:
        self._used.add(id(conn))
        return conn

    def _to_idle(self, conn: Any) -> None:
        self._idle.append(conn)

    def _drop(self, conn: Any) -> None:
        self._used.discard(id(conn))
        self._size -= 1

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _can_connect(self) -> bool:
        return self._size < self.maxconn and self._connecting < self.max_connecting

    def getconn(self, timeout: float | None = None) -> Any:
        with self._lock:
            if self.closed:
                raise PoolClosed("pool is closed")
            waiter = None
            if not self._waiters and self._idle:
                return self._lease(self._idle.pop())
            if not self._waiters and self._can_connect():
                self._size += 1  # the slot is ours: nobody else can take it meanwhile
                self._connecting += 1
            else:
                waiter = Waiter()
                self._waiters.append(waiter)
        if waiter is not None:
            wait = self.timeout if timeout is None else timeout
            if not waiter.bell.acquire(timeout=wait):
                with self._lock:  # timed out, unless served just now
                    if waiter.conn is None and waiter.error is None and not waiter.connect:
                        self._waiters.remove(waiter)
                        raise PoolTimeout("no connection came back in time")
            if waiter.error is not None:
                raise waiter.error
            if waiter.conn is not None:
                return waiter.conn
        try:  # a slot is reserved for us: connect with no lock held
            conn = self._connect()
        except BaseException:
            with self._lock:
                self._size -= 1
                self._connecting -= 1
                self._dispatch()
            raise
        with self._lock:
            self._connecting -= 1
            self._dispatch()  # the connect budget has room again
            return self._lease(conn)

    def _dispatch(self) -> None:
        """Serve waiters in arrival order (lock held): an idle connection, else a slot."""
        while self._waiters:
            waiter = self._waiters[0]
            if self._idle:
                waiter.conn = self._lease(self._idle.pop())
            elif self._can_connect():
                self._size += 1
                self._connecting += 1
                waiter.connect = True
            else:
                return
            self._waiters.popleft()
            waiter.ring()

    def putconn(self, conn: Any) -> None:
        with self._lock:
            if id(conn) not in self._used:
                raise PoolMisuse("connection is not checked out from this pool")
            if not (self.closed or conn.closed):
                self._used.remove(id(conn))
                self._to_idle(conn)
                self._dispatch()
                return
            self._drop(conn)  # a broken connection frees its slot
            self._dispatch()
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
    from ._common import server
    from .measure import spike

    with server() as dsn:
        for cls in (step4_fifo.FifoPool, ReservePool):
            print(f"{cls.__name__:12}", spike(cls, dsn))


if __name__ == "__main__":
    main()

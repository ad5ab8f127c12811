"""Step 6: maintenance. Reap idle connections, retire old ones, check, take back leaks.

Step 5's pool keeps every connection it ever opened, hands out one the server killed an
hour ago, and loses a slot for good to a caller who forgets to return it. This step adds,
through step 5's three hooks: the time each connection was last returned (the idle list is
a stack, so the coldest sit at the bottom), a lifetime with jitter, a ping before handing
out a connection idle longer than `health_check_after`, and `maintain()`, which a timer
calls to close cold, expired and forgotten connections. The clock is injectable, so tests
move time by hand. ``python -m course.step6_maintained``.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from typing import Any

import psycopg2

from ._common import select_one
from .step5_reserve import ReservePool

LIFETIME_JITTER = 0.95  # lifetimes spread over [95 %, 100 %]: no reconnect storm


class MaintainedPool(ReservePool):
    def __init__(
        self,
        minconn: int,
        maxconn: int,
        *args: Any,
        max_idle: float = 600.0,
        max_lifetime: float = 3600.0,
        max_lease: float | None = None,
        health_check_after: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        **kwargs: Any,
    ) -> None:
        self.max_idle, self.max_lifetime, self.max_lease = max_idle, max_lifetime, max_lease
        self.health_check_after = health_check_after
        self._clock = clock
        self._expires: dict[int, float] = {}  # id(conn) -> when to retire it
        self._last_used: dict[int, float] = {}  # id(idle conn) -> when it came back
        self._leased_at: dict[int, tuple[float, Any]] = {}  # id -> (since when, conn)
        super().__init__(minconn, maxconn, *args, **kwargs)

    def _connect(self) -> Any:
        conn = super()._connect()
        jitter = random.uniform(LIFETIME_JITTER, 1.0)
        self._expires[id(conn)] = self._clock() + self.max_lifetime * jitter
        return conn

    def _lease(self, conn: Any) -> Any:
        self._leased_at[id(conn)] = (self._clock(), conn)
        return super()._lease(conn)

    def _to_idle(self, conn: Any) -> None:
        self._leased_at.pop(id(conn), None)
        self._last_used[id(conn)] = self._clock()
        super()._to_idle(conn)

    def _drop(self, conn: Any) -> None:
        super()._drop(conn)
        for table in (self._expires, self._last_used, self._leased_at):
            table.pop(id(conn), None)

    def getconn(self, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            conn = super().getconn(max(0.0, deadline - time.monotonic()))
            if self._still_good(conn):  # no lock held: the ping is a round trip
                return conn
            with self._lock:  # drop it, free its slot, and try again
                self._drop(conn)
                self._dispatch()
            conn.close()

    def _still_good(self, conn: Any) -> bool:
        now = self._clock()
        if now >= self._expires.get(id(conn), math.inf):
            return False
        if now - self._last_used.get(id(conn), now) <= self.health_check_after:
            return True  # used moments ago: skip the round trip
        try:
            select_one(conn)
            conn.rollback()  # end the transaction the ping opened (unless autocommit)
        except psycopg2.Error:
            return False
        return True

    def maintain(self) -> None:
        """Close idle connections past max_idle (down to minconn) or past their lifetime,
        and take back leases older than max_lease. Call it every second or so."""
        now = self._clock()
        close: list[Any] = []
        with self._lock:
            keep = []
            for conn in self._idle:  # bottom of the stack first: the coldest
                cold = now - self._last_used[id(conn)] >= self.max_idle
                above_min = self._size - len(close) > self.minconn
                if now >= self._expires[id(conn)] or (cold and above_min):
                    close.append(conn)
                else:
                    keep.append(conn)
            self._idle = keep
            if self.max_lease is not None:
                for since, conn in list(self._leased_at.values()):
                    if now - since >= self.max_lease:  # forgotten: its borrower loses it
                        close.append(conn)
            for conn in close:
                self._drop(conn)
            self._dispatch()  # freed slots may let a waiter connect
        for conn in close:
            conn.close()


def main() -> None:
    from ._common import server

    with server() as dsn:
        pool = MaintainedPool(1, 3, dsn, max_idle=0.2, max_lease=0.2, health_check_after=0.1)
        burst = [pool.getconn() for _ in range(3)]
        for conn in burst:
            pool.putconn(conn)
        time.sleep(0.3)
        pool.maintain()
        print("after a burst of 3 and 0.3 s idle (max_idle 0.2):", len(pool._idle), "idle")
        conn = pool.getconn()
        pid = conn.get_backend_pid()
        pool.putconn(conn)
        killer = psycopg2.connect(dsn)
        killer.cursor().execute("SELECT pg_terminate_backend(%s, 5000)", (pid,))
        killer.close()
        time.sleep(0.2)
        conn = pool.getconn()
        select_one(conn)
        print("its backend killed, the next getconn still works:", pid != conn.get_backend_pid())
        pool.putconn(conn)
        forgotten = [pool.getconn() for _ in range(3)]  # and never returned
        time.sleep(0.3)
        pool.maintain()
        reclaimed = all(conn.closed for conn in forgotten)
        print("3 leases forgotten for 0.3 s (max_lease 0.2), reclaimed:", reclaimed)
        pool.putconn(pool.getconn(timeout=1))
        pool.closeall()


if __name__ == "__main__":
    main()

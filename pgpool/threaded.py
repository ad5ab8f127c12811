"""ThreadedConnectionPool and SimpleConnectionPool: the two pools of psycopg2.pool.

Both share their logic with `AbstractConnectionPool`; they differ in who opens connections
for callers that wait, and who runs maintenance:

* ThreadedConnectionPool has one background thread, the connector (connector.py), which
  opens the connections waiters need and runs maintenance every `maintenance_interval`.
* SimpleConnectionPool starts no thread: a caller connects itself, and maintenance runs
  from its own getconn/putconn calls.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

from psycopg2.extensions import connection as Connection

from .base import NOW
from .bell import Bell
from .connector import Connector
from .log import logger
from .pool import AbstractConnectionPool
from .state import Reservation


class ThreadedConnectionPool(AbstractConnectionPool):
    """A pool to share between threads: blocks up to `timeout` when exhausted, serving waiters
    first come first served, with a background connector that opens connections for them and
    keeps the pool healthy (maintenance every `maintenance_interval`, unless None)."""

    def __init__(self, minconn: int, maxconn: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(minconn, maxconn, *args, **kwargs)
        self._connector: Connector | None = None
        self._start_connector()  # not while open=False: open() starts it

    def _start(self) -> None:
        # After open(): the connector fills minconn in the background, with its back-off.
        self._start_connector(refill_now=True)

    def _start_connector(self, refill_now: bool = False) -> None:
        if self.closed:
            return
        interval = self._options.maintenance_interval
        self._next_maintenance = math.inf if interval is None else self._clock() + interval
        if refill_now:  # its first round runs maintenance, which refills to minconn
            self._next_maintenance = self._clock()
        bell = Bell()
        self._state.use_connector(bell)
        self._queue_at_once = self._options.timeout > 0 and not self._connects_inline
        self._connector = Connector(self, bell)
        self._connector.start()

    def _connector_round(self) -> float | None:
        """One round of the connector, on its thread (lock not held): open a connection if
        waiters need one, else run maintenance if it is due. Returns how long to sleep
        before the next round (the bell may cut it short), or None once the pool is closed.
        """
        state = self._state
        bell = state.connector
        assert bell is not None
        reservation = Reservation()  # before reserving: see Reservation
        with self._lock:
            bell.rearm()  # a ring from now on cuts the coming sleep short: none is lost
            if state.closed:
                return None
            now = self._clock()
            connect = state.start_connect(now, reservation)
            # Waiters that need a connect the back-off holds back: try again when it ends.
            retry = state.next_connect_at
            if connect or not state.connect_wanted() or retry <= now:
                retry = math.inf
        if connect:
            try:
                # _refill_one is in base.py: it connects, then hands the connection to
                # the oldest waiter, or puts it on the idle stack; or records a back-off
                self._refill_one(reservation)
            except BaseException:  # from a callback (configure): no interrupt reaches here
                logger.exception("pool %r: a connect failed", self.name)
            finally:
                if reservation.left:
                    self._record(state.release, reservation, NOW)
            return 0.0
        if now >= self._next_maintenance:
            interval = self._options.maintenance_interval or math.inf
            self._next_maintenance = now + interval
            try:
                self.maintain()
            except BaseException:  # a failed pass must not end maintenance for good; no
                # interrupt reaches this thread, so this is a callback's (sys.exit() in
                # reconnect_failed raises SystemExit here, not in the main thread)
                logger.exception("pool %r: maintenance pass failed", self.name)
            return 0.0
        return min(self._next_maintenance, retry) - now

    def _after_fork_in_child(self) -> None:
        if self._connector is not None:
            self._connector.forget()
        super()._after_fork_in_child()
        self._start_connector()  # threads do not survive fork(): the child starts its own


class SimpleConnectionPool(AbstractConnectionPool):
    """A pool for a single thread, like psycopg2's: no background thread (maintenance runs
    from its own getconn/putconn calls), and `timeout` defaults to 0: with one thread nobody
    could return a connection while it waited, so an exhausted pool fails at once."""

    _default_timeout = 0.0

    def getconn(self, key: Hashable | None = None, timeout: float | None = None) -> Connection:
        # Maintenance is due at most once per maintenance_interval: one clock read decides.
        now = self._clock()
        if now >= self._next_maintenance:
            self._maintain_inline(now)
        return super().getconn(key, timeout)

    def putconn(self, conn: Any = None, key: Hashable | None = None, close: bool = False) -> None:
        super().putconn(conn, key, close)
        now = self._clock()
        if now >= self._next_maintenance:
            self._maintain_inline(now)

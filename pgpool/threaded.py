"""ThreadedConnectionPool and SimpleConnectionPool: the two pools of psycopg2.pool.

Both share all their logic with `AbstractConnectionPool`; they differ only in who runs
maintenance and whether waiting makes sense.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from psycopg2.extensions import connection as Connection

from .maintenance import MaintenanceThread
from .pool import AbstractConnectionPool


class ThreadedConnectionPool(AbstractConnectionPool):
    """A pool to share between threads: blocks up to `timeout` when exhausted, serving waiters
    first come first served, and keeps itself healthy from a background maintenance thread
    (unless `maintenance_interval=None`)."""

    def __init__(self, minconn: int, maxconn: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(minconn, maxconn, *args, **kwargs)
        self._maintenance: MaintenanceThread | None = None
        self._start_maintenance()

    def _start_maintenance(self) -> None:
        interval = self._options.maintenance_interval
        if interval is not None and not self.closed:
            self._maintenance = MaintenanceThread(self, interval)
            self._maintenance.start()

    def _stop_maintenance(self) -> None:
        if self._maintenance is not None:
            self._maintenance.stop()

    def _after_fork_in_child(self) -> None:
        super()._after_fork_in_child()
        self._start_maintenance()  # threads do not survive fork()


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

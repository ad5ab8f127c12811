"""The maintenance thread: a polite background guest of a ThreadedConnectionPool.

Every `interval` seconds it calls `pool.maintain()` (reap idle connections, expire old ones,
reclaim forgotten leases, refill to minconn). It is polite in three ways:

* it holds only a *weak* reference to the pool, so a pool nobody uses any more can be
  garbage-collected, and the thread then ends by itself;
* it sleeps on an Event, so `closeall()` (or the pool's collection) wakes it at once;
* it is a daemon thread, so it never keeps the interpreter alive or delays its exit.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .pool import AbstractConnectionPool

logger = logging.getLogger("pgpool")


class MaintenanceThread:
    def __init__(self, pool: AbstractConnectionPool, interval: float) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=_run,
            args=(weakref.ref(pool), self._stop, interval),
            name=f"pgpool-maintenance-{pool.name}",
            daemon=True,
        )
        # When the pool is garbage-collected, stop at once rather than at the next tick.
        weakref.finalize(pool, self._stop.set)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def _run(
    pool_ref: weakref.ref[AbstractConnectionPool], stop: threading.Event, interval: float
) -> None:
    interval = min(interval, threading.TIMEOUT_MAX)  # inf or 1e300 would overflow wait()
    while not stop.wait(interval):
        pool = pool_ref()
        if pool is None or pool.closed:
            return
        try:
            pool.maintain()
        except Exception:  # a failed pass must not end maintenance for good
            logger.exception("pool %r: maintenance pass failed", pool.name)
        del pool  # drop the strong reference before sleeping

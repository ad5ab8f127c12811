"""The connector: the one background thread of a ThreadedConnectionPool.

Its first job is opening connections for callers who wait. A caller that finds nothing idle
queues; when waiters outnumber the connects in flight and the pool has room, `dispatch`
rings the connector's bell, and the connector opens one connection. That connection goes to
whoever is then the oldest waiter, unless a returned connection served everyone first, in
which case it simply joins the idle stack. So a waiter never sits through a slow connect of
its own while connections come back around it (HikariCP and psycopg_pool work this way), and
a spike of callers opens a connection or two, not one per caller.

Its second job is the maintenance pass (`pool.maintain()`) every `maintenance_interval`:
reaping, expiry, leases, refills to `minconn`. One thread does both; a refill is a connect.

It is a polite guest of the pool, in three ways:

* it holds only a *weak* reference to the pool between rounds, so a pool nobody uses any
  more can be garbage-collected, and the thread then ends by itself;
* it sleeps on a bell (bell.py) that `closeall()` and the pool's collection ring, so it
  ends at once, and nothing ever joins it;
* it is a daemon thread, so it never keeps the interpreter alive or delays its exit.

No exit path takes a lock. The finalizer that rings the bell when the pool is collected
takes none (nobody else can ring it then), and does not run at interpreter exit. It used
to take the pool's lock: a child forked while a parent thread held that lock got a new
lock for its pool, but the finalizer kept the old one, held for ever by a thread that does
not exist in the child, and the child hung in its exit handlers after `sys.exit()`.
"""

from __future__ import annotations

import threading
import weakref
from typing import Protocol

from .bell import Bell
from .log import logger

# After a round failed with an unexpected error: pause before the next, never spin.
PAUSE_AFTER_ERROR = 1.0


class ConnectorPool(Protocol):
    """What the connector needs of its pool (a ThreadedConnectionPool): a name for its
    thread and its logs, and the round to run."""

    @property
    def name(self) -> str: ...

    def _connector_round(self) -> float | None: ...


class Connector:
    """The thread; what it does each round is `ThreadedConnectionPool._connector_round`."""

    def __init__(self, pool: ConnectorPool, bell: Bell) -> None:
        self._thread = threading.Thread(
            target=_run,
            args=(weakref.ref(pool), bell),
            name=f"pgpool-connector-{pool.name}",
            daemon=True,
        )
        # When the pool is garbage-collected, wake the thread so that it ends now. Rung
        # without the pool's lock: once the pool is gone nobody else rings or rearms the
        # bell (both need the pool). Not at interpreter exit (atexit=False): the pool may
        # still be in use then, and the daemon thread ends with the process anyway.
        self._finalizer = weakref.finalize(pool, bell.ring)
        self._finalizer.atexit = False

    def start(self) -> None:
        self._thread.start()

    def forget(self) -> None:
        """In a forked child, where this thread does not exist: the pool's collection must
        not ring the parent's bell (the child's pool starts a connector of its own)."""
        self._finalizer.detach()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


def _run(pool_ref: weakref.ref[ConnectorPool], bell: Bell) -> None:
    while True:
        pool = pool_ref()
        if pool is None:
            return
        try:
            pause = pool._connector_round()
        except Exception:  # a failed round must not end the connector for good
            logger.exception("pool %r: the connector's round failed", pool.name)
            pause = PAUSE_AFTER_ERROR
        del pool  # drop the strong reference before sleeping
        if pause is None:
            return  # the pool is closed
        bell.sleep(pause)

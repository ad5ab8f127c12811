"""The pools of one process, one per database alias and set of connection parameters.

Django makes a `DatabaseWrapper` per alias *per thread*, so a pool cannot live on a
wrapper: the threads of a process share the pools kept here. Each is keyed by the alias
and by the connection parameters, because Django's test runner renames the database of
an alias in place (``settings_dict["NAME"] = "test_app"``): the next checkout must then
get a pool of the test database, not the old one.

A pool is made on first use, never at import or at settings time, so a process that
forks before touching the database (gunicorn's ``preload_app``, Celery's prefork
workers) makes its pools in each child. A child forked after a pool was made gets the
same pool objects, which pgpool's own fork handler (``pgpool/base.py``) has given fresh
state: the parent's connections are forgotten without touching their sockets.

Django is not imported here, so `stats()` and `close_pools()` work anywhere.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ...stats import PoolStats
from ...threaded import ThreadedConnectionPool

# Guards _pools while a pool is made or closed; a checkout only reads the dict (one dict
# lookup is atomic), so the lock is taken once per pool, at start-up.
_lock = threading.Lock()


def _new_lock_after_fork() -> None:
    # A parent thread making a pool at the fork held the lock; nobody in the child would
    # release it, and the child's first checkout would wait for it for ever.
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_new_lock_after_fork)
# (alias, key of the connection parameters) -> the open pool. Closed pools are removed.
_pools: dict[tuple[str, str], ThreadedConnectionPool] = {}


def pool_for(
    alias: str, params_key: str, make: Callable[[], ThreadedConnectionPool]
) -> ThreadedConnectionPool:
    """The open pool of `alias` with these connection parameters, made by `make` if none.

    `make` must return a pool created with ``open=False`` (no connection, no thread): it is
    called under this module's lock, and opened here, which only starts its connector
    thread; the connector opens ``min_size`` connections in the background.
    """
    pool = _pools.get((alias, params_key))
    if pool is not None and not pool.closed:
        return pool
    with _lock:  # two threads' first checkout must not make two pools
        pool = _pools.get((alias, params_key))
        if pool is None or pool.closed:
            pool = make()
            pool.open()
            _pools[(alias, params_key)] = pool
        return pool


def close_pools(alias: str | None = None) -> None:
    """Close the pools of `alias` (of every alias if None). Idle connections close now,
    checked-out ones when they are returned; the next checkout makes a new pool."""
    with _lock:
        keys = [key for key in _pools if alias is None or key[0] == alias]
        closing = [_pools.pop(key) for key in keys]
    for pool in closing:  # outside the lock: closing talks to the server
        if not pool.closed:
            pool.closeall(in_use=False)


def stats() -> dict[str, PoolStats]:
    """A `PoolStats` snapshot per alias, of the pool its connections come from now (the
    latest made, if the test runner's renaming left an older one open)."""
    with _lock:
        pools = list(_pools.items())
    return {alias: pool.stats() for (alias, _), pool in pools if not pool.closed}

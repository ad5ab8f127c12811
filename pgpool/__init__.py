"""pgpool: a blocking, self-healing, drop-in replacement for psycopg2.pool.

Change the import and keep your code::

    import pgpool as pool            # was: from psycopg2 import pool
    p = pool.ThreadedConnectionPool(1, 10, dsn)

Where to read next:

- `threaded.py`: the two pools, and who opens connections for callers that wait;
  `null.py`: the pool that keeps no idle connection, for use behind PgBouncer;
- `pool.py`: the psycopg2.pool API and the lifecycle methods, and every step of a
  checkout and a return; it stands on `maintenance.py` (reaping, expiry, reclaims,
  refills) and `base.py` (the settings, the state and its lock, opening a connection);
- `state.py`: the bookkeeping, its invariants, and every state transition;
- `connector.py` and `bell.py`: the Threaded pool's one background thread, and how it sleeps;
- `connection.py` and `watchdog.py`: what is done to a connection (clean, ping, cancel), and
  the deadline that cuts a silent one;
- `options.py`, `stats.py`, `errors.py`: the settings, the snapshot, the exceptions;
- `metrics.py` (Prometheus), `helpers.py` (the seed article's DBHelper), `resets.py`;
- `driver.py`: which psycopg2 to install, and the error when there is none; `log.py`:
  the logger, which imports `logging` only when the pool first logs.
"""

# First: without psycopg2 this raises one error that says what to install (driver.py).
from . import driver as _driver  # noqa: F401
from .errors import PoolClosed, PoolError, PoolTimeout, TooManyWaiting
from .helpers import DBHelper
from .null import NullConnectionPool
from .options import PoolOptions
from .pool import AbstractConnectionPool
from .resets import discard_all, reset_session
from .stats import PoolStats
from .threaded import SimpleConnectionPool, ThreadedConnectionPool

__all__ = [
    "AbstractConnectionPool",
    "DBHelper",
    "NullConnectionPool",
    "PoolClosed",
    "PoolError",
    "PoolOptions",
    "PoolStats",
    "PoolTimeout",
    "SimpleConnectionPool",
    "ThreadedConnectionPool",
    "TooManyWaiting",
    "discard_all",
    "reset_session",
]
__version__ = "0.1.0"

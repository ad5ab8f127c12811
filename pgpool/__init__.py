"""pgpool: a blocking, self-healing, drop-in replacement for psycopg2.pool.

Change the import and keep your code::

    import pgpool as pool            # was: from psycopg2 import pool
    p = pool.ThreadedConnectionPool(1, 10, dsn)

Where to read next: `threaded.py` (the two pools), `pool.py` (lock and I/O), `state.py`
(the bookkeeping and its invariants), `connection.py` (what is done to a connection),
`maintenance.py` (the background thread), `helpers.py` (the seed article's DBHelper).
"""

from .errors import PoolClosed, PoolError, PoolTimeout, TooManyWaiting
from .helpers import DBHelper
from .options import PoolOptions
from .pool import AbstractConnectionPool
from .resets import discard_all, reset_session
from .stats import PoolStats
from .threaded import SimpleConnectionPool, ThreadedConnectionPool

__all__ = [
    "AbstractConnectionPool",
    "DBHelper",
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

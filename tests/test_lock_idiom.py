"""The claim behind the cycle goal's lock floors (benchmarks/lock_idiom.py): a signal handler
that raises never leaves a lock held with `with lock:`, which is why pgpool pays for that
idiom rather than psycopg2.pool's acquire/try/finally."""

from __future__ import annotations

import sys

import pytest

import pgpool
from benchmarks import lock_idiom

POSIX = pytest.mark.skipif(sys.platform == "win32", reason="SIGUSR1 is POSIX")


@POSIX
def test_with_never_leaves_the_lock_held() -> None:
    # Counts interrupts, not time: a busy machine gets a generous deadline to reach them.
    interrupts, held = lock_idiom.left_held("with", 60.0, enough=500)
    assert interrupts >= 500  # the signals did land: the loop was interrupted, many times
    assert held == 0


@POSIX
def test_a_signal_never_leaves_pgpool_locked(dsn: str) -> None:
    """The same signals around pgpool's own getconn and putconn, on the real server: an
    interrupt may land anywhere in them, and the pool's lock is never left held (psycopg2.pool's
    is, within a few interrupts: `python -m benchmarks.lock_idiom --dsn DSN`)."""
    interrupts, held = lock_idiom.pool_left_held(
        lambda: pgpool.ThreadedConnectionPool(1, 1, dsn, timeout=1), 60.0, enough=500
    )
    assert interrupts >= 500
    assert held == 0


def test_the_pool_fast_paths_hold_the_lock_with_with() -> None:
    """The idiom the measurement defends is the one the pool uses on its hottest lines."""
    import inspect

    for method in (pgpool.AbstractConnectionPool.getconn, pgpool.AbstractConnectionPool.putconn):
        source = inspect.getsource(method)
        assert "with self._lock:" in source and ".acquire()" not in source

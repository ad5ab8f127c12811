"""The claim behind the cycle goal's lock floors (benchmarks/lock_idiom.py): a signal handler
that raises never leaves a lock held with `with lock:`, which is why pgpool pays for that
idiom rather than psycopg2.pool's acquire/try/finally."""

from __future__ import annotations

import sys

import pytest

from benchmarks import lock_idiom


@pytest.mark.skipif(sys.platform == "win32", reason="SIGUSR1 is POSIX")
def test_with_never_leaves_the_lock_held() -> None:
    interrupts, held = lock_idiom.left_held("with", 0.5)
    assert interrupts > 100  # the signals did land: the loop was interrupted, many times
    assert held == 0


def test_the_pool_fast_paths_hold_the_lock_with_with() -> None:
    """The idiom the measurement defends is the one the pool uses on its hottest lines."""
    import inspect

    import pgpool

    for method in (pgpool.AbstractConnectionPool.getconn, pgpool.AbstractConnectionPool.putconn):
        source = inspect.getsource(method)
        assert "with self._lock:" in source and ".acquire()" not in source

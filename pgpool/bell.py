"""`Bell`: how a sleeping thread is woken by whoever holds the pool's lock.

A waiting caller, and the pool's background worker, each sleep on a bell of their own
rather than on a `threading.Condition` of the pool. A bell is a plain lock held while
there is nothing to report: sleeping is acquiring it again, ringing is releasing it.

`Condition.wait` does the same underneath (CPython allocates one lock per waiter and
sleeps on it), and then takes the outer lock again before returning. A bell skips that
re-acquire: whoever rings it has already written everything the sleeper needs (a waiter
finds its connection leased to it), so a woken thread goes on without queueing for the
pool's lock behind the thread that woke it.

`ring` and `rearm` are called with the pool's lock held, `sleep` without it. (One
exception: the connector's bell is rung without the lock by the pool's finalizer, once the
pool is gone and nobody else can ring or rearm it; see connector.py.) The `rung` flag makes
ringing twice before the sleeper wakes the same as ringing once.
"""

from __future__ import annotations

import threading


class Bell:
    __slots__ = ("lock", "rung")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()  # held = nothing to report
        self.rung = False  # released, and the sleeper has not yet rearmed it

    def ring(self) -> None:
        """Wake the sleeper (pool lock held). Ringing twice before it wakes is once."""
        if not self.rung:
            self.rung = True
            self.lock.release()

    def sleep(self, timeout: float | None) -> None:
        """Wait for a ring (pool lock NOT held), at most `timeout` seconds (None: no limit).

        Returns at once if the bell was rung since the last `rearm`.
        """
        if timeout is None or timeout >= threading.TIMEOUT_MAX:
            self.lock.acquire()
        elif timeout > 0:
            self.lock.acquire(timeout=timeout)
        else:
            self.lock.acquire(blocking=False)

    def rearm(self) -> None:
        """After waking (pool lock held): make the bell ringable again."""
        if self.rung:
            self.lock.acquire(blocking=False)  # taken by sleep() already, or free: take it
            self.rung = False

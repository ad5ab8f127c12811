"""`PoolStats`: a frozen snapshot of what a pool holds and what it has done.

Gauges (`size`, `idle`, `in_use`, `connecting`, `waiting`) describe the moment the snapshot
was taken; counters only grow, from the pool's creation or from the last `pool.pop_stats()`,
which reads and resets them in one step. Both take the snapshot under the pool's lock, so
the numbers are consistent with each other.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PoolStats:
    name: str
    minconn: int
    maxconn: int
    # gauges
    size: int  # connections that exist or are being opened: idle + in use + connecting
    idle: int  # open connections waiting in the pool
    in_use: int  # connections checked out (or being cleaned on their way back)
    connecting: int  # slots reserved for a connect in progress
    waiting: int  # callers queued in getconn
    # counters (COUNTERS lists them; pop_stats() sets them back to zero)
    checkouts: int = 0  # successful getconn calls (a sticky key's repeat call included)
    waits: int = 0  # checkouts that had to queue
    timeouts: int = 0  # getconn calls that ran out of time
    wait_time: float = 0.0  # seconds spent queued, summed over all waits
    connections_opened: int = 0
    connect_errors: int = 0
    connections_closed: int = 0  # every connection the pool closed or dropped, for any reason
    idle_reaped: int = 0  # closed after max_idle above minconn
    expired: int = 0  # closed after max_lifetime
    leases_reclaimed: int = 0  # taken back after max_lease
    broken_returns: int = 0  # returned closed/broken, or rollback/reset failed
    failed_checks: int = 0  # idle connections found dead by the checkout health check


# The counters of PoolStats, in order: what pop_stats() resets and metrics export as totals.
COUNTERS = (
    "checkouts", "waits", "timeouts", "wait_time", "connections_opened", "connect_errors",
    "connections_closed", "idle_reaped", "expired", "leases_reclaimed", "broken_returns",
    "failed_checks",
)  # fmt: skip

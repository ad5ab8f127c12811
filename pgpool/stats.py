"""`PoolStats`: a frozen snapshot of what a pool holds and what it has done.

Gauges (`size`, `idle`, `in_use`, `connecting`, `waiting`) describe the moment the snapshot
was taken; counters only grow, from the pool's creation or from the last `pool.pop_stats()`,
which reads and resets them in one step. Both take the snapshot under the pool's lock, so
the numbers are consistent with each other.

A `NamedTuple` rather than a frozen dataclass: as frozen (assigning a field raises
AttributeError), read by name the same way (`stats.idle`, `stats._asdict()` for a dict),
and it costs `import pgpool` no `dataclasses` module, which alone takes longer to import
than the whole pool (benchmarks/imports.py).
"""

from __future__ import annotations

from typing import NamedTuple


class PoolStats(NamedTuple):
    """What `pool.stats()` and `pool.pop_stats()` return: gauges at one instant, and
    counters since the pool was made or since the last `pop_stats()`.

    Attributes:
        name: the pool's name
        minconn: the pool's `minconn` when the snapshot was taken
        maxconn: the pool's `maxconn` when the snapshot was taken
        size: gauge: connections that exist or are being opened (idle + in use +
            connecting); never more than `maxconn`
        idle: gauge: open connections waiting in the pool
        in_use: gauge: connections checked out (or being cleaned on their way back)
        connecting: gauge: connects in progress (each holds a slot)
        waiting: gauge: callers queued in `getconn`
        checkouts: successful `getconn` calls (a sticky key's repeat call included)
        waits: checkouts that had to queue
        timeouts: `getconn` calls that ran out of time
        wait_time: seconds spent queued, summed over all waits
        connections_opened: connects that succeeded
        connect_errors: connects that failed
        connections_closed: every connection the pool closed or dropped, for any reason
        idle_reaped: closed after `max_idle`, above `minconn`
        expired: closed after `max_lifetime`
        leases_reclaimed: taken back after `max_lease`
        broken_returns: returned closed or broken, or whose rollback or `reset` failed
        failed_checks: idle connections found dead by the checkout health check
    """

    name: str
    minconn: int
    maxconn: int
    # gauges
    size: int
    idle: int
    in_use: int
    connecting: int
    waiting: int
    # counters (COUNTERS lists them; pop_stats() sets them back to zero)
    checkouts: int = 0
    waits: int = 0
    timeouts: int = 0
    wait_time: float = 0.0
    connections_opened: int = 0
    connect_errors: int = 0
    connections_closed: int = 0
    idle_reaped: int = 0
    expired: int = 0
    leases_reclaimed: int = 0
    broken_returns: int = 0
    failed_checks: int = 0


# The counters of PoolStats, in order: what pop_stats() resets and metrics export as totals.
# Every field from `checkouts` on, read off the record so that a new counter needs no second list.
COUNTERS: tuple[str, ...] = PoolStats._fields[PoolStats._fields.index("checkouts") :]

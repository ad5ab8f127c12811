"""`PoolMaintenance`: what keeps a pool healthy between requests.

One maintenance pass (`maintain`) closes idle connections past `max_idle` (above `minconn`)
or past `max_lifetime`, reclaims connections checked out longer than `max_lease`, pings the
idle connections whose socket the server has written to (a restart, a terminated backend),
and opens connections back up to `minconn`. A ThreadedConnectionPool's connector thread
runs it every `maintenance_interval`; a SimpleConnectionPool runs it from its own calls.

As everywhere in the pool, `PoolState` decides under the lock (`plan_maintenance`,
`reserve_refills`, `park_idle`) and this module does the I/O after releasing it.

Two methods here serve more than maintenance. `_refill_one` is also how the connector
opens a connection for the callers who wait (`ThreadedConnectionPool._connector_round`, in
threaded.py): `PoolState.connected_idle` hands it to the oldest waiter. `_connect_failed`
records every failed connect, a caller's own too (`_open_reserved`, in pool.py), and calls
`reconnect_failed` once connects have been failing for `reconnect_timeout`.
"""

from __future__ import annotations

import logging
import math

from . import connection as conn_ops
from . import watchdog
from .base import NOW, PING_TIMEOUT, PoolBase
from .state import Reservation, Slot

logger = logging.getLogger("pgpool")


class PoolMaintenance(PoolBase):
    """Maintenance, refills and reclaims: the layer between `PoolBase` (base.py) and the
    pool's API (`AbstractConnectionPool`, pool.py)."""

    def maintain(self) -> None:
        """Run one maintenance pass now: ping the idle connections the server has dropped
        (`_probe_idle`), close idle connections past `max_idle` (above `minconn`) or past
        `max_lifetime`, reclaim leases past `max_lease`, and refill to `minconn`. The
        background thread (or, for a Simple pool, its own calls) does this every
        `maintenance_interval`; call it yourself only to force it."""
        self._probe_idle()
        with self._lock:
            if self._state.closed:
                return
            now = self._clock()
            plan = self._state.plan_maintenance(now)
            # Under the same lock as the lease ends: from now on the borrower's putconn of a
            # reclaimed connection is harmless, whenever it comes.
            for slot in plan.reclaimed:
                self._reclaimed.add(slot.conn)
        if plan.close:
            logger.debug(
                "pool %r: closing %d idle connection(s): %d reaped (idle past max_idle), "
                "%d expired (past max_lifetime)",
                self.name, len(plan.close), plan.reaped, plan.expired,
            )  # fmt: skip
        for slot in plan.close:
            conn_ops.close_quietly(slot.conn)
        for slot in plan.reclaimed:
            self._reclaim(slot, now)
        self._refill()  # after the reclaims: their slots are free only once they are closed

    def _refill(self, fail: bool = False, until_full: bool = False) -> None:
        """Open connections up to minconn, one at a time: one round of at most
        `max_connecting` (a maintenance pass), or rounds until minconn is reached
        (`until_full`: open, check, resize). With `fail`, the first connect error is raised
        (after the back-off has recorded it)."""
        state = self._state
        while True:
            reservation = Reservation()  # before reserving: see Reservation
            try:
                with self._lock:
                    if not state.closed:
                        state.reserve_refills(self._clock(), reservation)
                if not reservation.left:
                    return
                while reservation.left:
                    if not self._refill_one(reservation, fail):
                        return  # failed: the back-off decides when to try again
            finally:
                if reservation.left:
                    self._record(state.release, reservation, NOW)
            if not until_full:
                return

    def _refill_one(self, reservation: Reservation, fail: bool = False) -> bool:
        """Open one connection for a slot of `reservation`. On failure, release all of it
        (the back-off decides when to try again) and return False."""
        state = self._state
        try:
            slot = self._open_slot()
        except BaseException as error:
            if not fail:  # else open() of a Simple pool: the caller gets the driver's error
                error.__traceback__ = None  # nobody raises it again: keep no frames alive
            self._connect_failed(error, reservation)
            if fail or not isinstance(error, Exception):
                raise
            # An outage is a few lines, not one per attempt (the back-off makes ~8 in its
            # first second): the first failure of a run is a warning, the retries DEBUG,
            # and reconnect_timeout's warning repeats for as long as it lasts.
            failures = state.connect_failures  # read without the lock: only for the log
            level = logging.WARNING if failures <= 1 else logging.DEBUG
            logger.log(level, "pool %r: could not open a connection: %s", self.name, error)
            logger.debug(
                "pool %r: %d connect(s) failed in a row; backing off until t=%.3f",
                self.name, failures, state.next_connect_at,
            )  # fmt: skip
            return False
        failures = state.connect_failures  # read without the lock: only for the log line
        if failures:
            logger.info("pool %r: connected again after %d failed connect(s)", self.name, failures)
        if not self._record(state.connected_idle, slot, NOW, reservation):
            conn_ops.close_quietly(slot.conn)  # the pool was closed meanwhile
            return False
        return True

    def _connect_failed(self, error: BaseException, reservation: Reservation | None = None) -> None:
        """Record a failed connect (the back-off starts or grows). Once connects have been
        failing for `reconnect_timeout`, say so, and call `reconnect_failed(pool)`: here,
        outside the lock, in whichever thread connected (the connector, or a caller)."""
        if not self._record(self._state.connect_failed, error, NOW, reservation):
            return
        options = self._options
        logger.warning(
            "pool %r: connects have been failing for reconnect_timeout (%s s); last error: %s",
            self.name, options.reconnect_timeout, error,
        )  # fmt: skip
        if options.reconnect_failed is not None:
            try:
                options.reconnect_failed(self)
            except Exception:  # the application's code: it must not stop the pool's retries
                logger.exception("pool %r: the reconnect_failed callback raised", self.name)

    def _reclaim(self, slot: Slot, now: float) -> None:
        """Close a connection whose lease ran past max_lease; its slot is freed only after.

        The server cancels the forgotten borrower's query first, so its backend ends with
        the connection instead of running on past maxconn. psycopg2's close() waits for a
        query running on the connection, which would stall maintenance for as long as the
        query runs: cut the socket next (the borrower's call fails at once), then close.
        """
        try:
            self._log_reclaim(slot, now)
            conn_ops.cancel_quietly(slot.conn, PING_TIMEOUT)
            watchdog.cut(slot.conn)
            conn_ops.close_quietly(slot.conn)
        finally:
            self._record(self._state.end_reclaim, slot, NOW)

    def _log_reclaim(self, slot: Slot, now: float) -> None:
        stack = "".join(slot.lease_stack.format()) if slot.lease_stack else "(not recorded)\n"
        logger.warning(
            "pool %r: reclaiming a connection checked out %.1f s ago and never returned "
            "(max_lease=%s s); getconn was called from:\n%s",
            self.name,
            now - slot.leased_at,
            self._options.max_lease,
            stack,
        )

    def _probe_idle(self) -> None:
        """Find idle connections the server has dropped (after a restart, say) without a
        round trip: only those whose socket turned readable are pinged, outside the lock,
        while parked in `returning` so nobody can check them out meanwhile."""
        with self._lock:
            idle = {slot.conn.fileno(): slot for slot in self._state.idle if not slot.conn.closed}
        suspects = [idle[fd] for fd in conn_ops.readable(list(idle))] if idle else []
        if not suspects:
            return
        with self._lock:
            suspects = self._state.park_idle(suspects, self._clock())
        for slot in suspects:
            alive = False
            try:
                alive = conn_ops.ping(slot.conn, PING_TIMEOUT)
            finally:
                state = self._state
                why = None if alive else "failed check"
                alive = self._record(state.end_return, slot, NOW, alive, why)
                if not alive:
                    conn_ops.close_quietly(slot.conn)

    def _maintain_inline(self, now: float) -> None:
        """A Simple pool's maintenance, run from its own calls once `_next_maintenance` is due
        (which stays at infinity when maintenance_interval is None)."""
        self._next_maintenance = now + (self._options.maintenance_interval or math.inf)
        self.maintain()

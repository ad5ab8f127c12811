"""`PoolMaintenance`: what keeps a pool healthy between requests.

One maintenance pass (`maintain`) closes idle connections past `max_idle` (above `minconn`)
or past `max_lifetime`, reclaims connections checked out longer than `max_lease`, pings the
idle connections whose socket the server has written to (a restart, a terminated backend),
and opens connections back up to `minconn`. A ThreadedConnectionPool's connector thread
runs it every `maintenance_interval`; a SimpleConnectionPool runs it from its own calls.

`check()` is here too: the idle probe's ping, done now for every idle connection.

As everywhere in the pool, `PoolState` decides under the lock (`plan_maintenance`,
`reserve_refills`, `park_idle`) and this module does the I/O after releasing it. Opening
one connection, with its back-off, is a layer below (`_refill_one` in base.py), shared
with the connector, which opens connections for the callers who wait.
"""

from __future__ import annotations

import math
import time

from . import connection as conn_ops
from .base import NOW, PING_TIMEOUT, PoolBase
from .log import logger
from .state import Reservation, Slot


class PoolMaintenance(PoolBase):
    """Maintenance, refills and reclaims: the layer between `PoolBase` (base.py) and the
    pool's API (`AbstractConnectionPool`, pool.py)."""

    def maintain(self) -> None:
        """Run one maintenance pass now: ping the idle connections the server has dropped,
        close idle connections past `max_idle` (above `minconn`) or past
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
                self.name, len(plan.close), len(plan.close) - plan.expired, plan.expired,
            )  # fmt: skip
        for slot in plan.close:
            conn_ops.discard(slot)
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

    def _reclaim(self, slot: Slot, now: float) -> None:
        """Close a connection whose lease ran past max_lease; its slot is freed only after
        (see `_stop`: its borrower may be running a query on it)."""
        try:
            self._log_reclaim(slot, now)
            self._stop([slot], PING_TIMEOUT)
        finally:
            self._record(self._state.end_reclaim, slot, NOW)

    def _stop(self, slots: list[Slot], cancel_timeout: float) -> None:
        """Close connections that their borrowers may be using right now (lock not held).

        The server cancels what runs on each first, so that its backend ends with the
        connection instead of running on past maxconn; the requests go out together, and
        are waited for at most `cancel_timeout` seconds in all. psycopg2's close() waits for
        a query running on the connection, for as long as the query runs: so each socket is
        cut next (the borrower's call fails at once), then the connection is closed. What
        this needs comes from each slot's `Stopper` (stopper.py), never from the connection,
        which the borrower may be closing meanwhile.
        """
        sent = []
        for slot in slots:
            if slot.stopper is not None:
                try:
                    delivered = slot.stopper.send_cancel()
                except RuntimeError:  # no thread to be had: cut and close all the same
                    logger.debug("pool %r: could not send a cancel", self.name, exc_info=True)
                    continue
                if delivered is not None:
                    sent.append(delivered)
        deadline = time.monotonic() + cancel_timeout  # the network's time, not the pool's clock
        for event in sent:
            event.wait(max(0.0, deadline - time.monotonic()))
        for slot in slots:
            if slot.stopper is not None:
                slot.stopper.cut()
            conn_ops.discard(slot)

    def _log_reclaim(self, slot: Slot, now: float) -> None:
        stack = "(not recorded)\n"
        if slot.lease_stack:
            import traceback  # with logging, on first use: see log.py

            stack = "".join(traceback.StackSummary.from_list(slot.lease_stack).format())
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
            self._ping_aside(slot)

    def check(self) -> int:
        """Ping every idle connection now, one at a time, outside the lock (each is taken
        aside meanwhile, so nobody checks it out), close the dead ones and open replacements
        up to `minconn`. Returns how many were dropped."""
        state = self._state
        dropped = 0
        with self._lock:
            candidates = list(state.idle)
        for candidate in candidates:
            with self._lock:
                parked = state.park_idle([candidate], self._clock())
            for slot in parked:  # [] when it was checked out or reaped meanwhile
                dropped += not self._ping_aside(slot)
        if dropped:
            logger.debug("pool %r: check dropped %d dead connection(s)", self.name, dropped)
        self._refill(until_full=True)
        return dropped

    def _ping_aside(self, slot: Slot) -> bool:
        """Ping an idle connection parked in `returning` (`PoolState.park_idle`), then put it
        back in its place on the idle stack (`end_check`: a ping is not a use, so it does
        not delay reaping), or close it if it did not answer. Returns whether it did."""
        alive = False
        try:
            alive = conn_ops.ping(slot.conn, PING_TIMEOUT)
        finally:
            if not self._record(self._state.end_check, slot, NOW, alive):
                conn_ops.discard(slot)
        return alive

    def _maintain_inline(self, now: float) -> None:
        """A Simple pool's maintenance, run from its own calls once `_next_maintenance` is due
        (which stays at infinity when maintenance_interval is None)."""
        self._next_maintenance = now + (self._options.maintenance_interval or math.inf)
        self.maintain()

"""The pool's bookkeeping: which connections exist, who holds them, who waits.

This module is the pool's brain with no hands: `PoolState` decides, and never does I/O,
never sleeps, never takes a lock. Every method is a *transition* and must be called with
the pool's lock held (see `base.py`, which owns the lock, and `pool.py` and
`maintenance.py`, which do all the talking to the server after releasing it). Keeping
decisions here and I/O there is what guarantees that connect, close and rollback never
happen under the lock: this module cannot do them.

A connection's life, as the states it moves through::

    connecting --> idle <--> leased --> returning --> idle
        |            |         |            |
        +------------+---------+------------+--> discarded (closed after the lock is released)

Every connection the pool owns is wrapped in a `Slot`, which carries its timestamps and the
session defaults to restore on return.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any, Literal

from .bell import Bell
from .errors import PoolError, TooManyWaiting
from .options import PoolOptions, describe
from .stats import COUNTERS, PoolStats

if TYPE_CHECKING:
    from .stopper import Stopper

# Back-off after failed connects: 10 ms, doubling, capped at 2 s, with jitter. The cap keeps
# recovery quick once the server is back; the doubling stops a pool hammering a dead server.
BACKOFF_BASE = 0.01
BACKOFF_CAP = 2.0
BACKOFF_MAX_DOUBLINGS = 16  # BACKOFF_BASE * 2 ** 16 is far past the cap already
# A waiter past its deadline wakes and leaves the queue within milliseconds; one still
# queued this long after it is an orphan (an exception hit its thread) and is dropped.
ORPHAN_GRACE = 5.0
# A connection lives max_lifetime * uniform(LIFETIME_JITTER, 1): connections opened together
# (at start, or after a restart) then expire spread out instead of all at once.
LIFETIME_JITTER = 0.95


def _last_used(slot: Slot) -> float:
    return slot.last_used


def same_key(a: Hashable | None, b: Hashable | None) -> bool:
    """Keys match as dict lookups match them: by identity first, then by equality.

    A key that is not equal to itself (``float("nan")``) still finds its connection when
    the same object is passed back, as in psycopg2.pool.
    """
    return a is b or a == b


class Slot:
    """One connection the pool owns, and what the pool knows about it.

    Written out with `__slots__` rather than as a dataclass, as are `Reservation` and
    `MaintenancePlan` below: the `dataclasses` module costs `import pgpool` more time than
    the whole pool does (benchmarks/imports.py).
    """

    __slots__ = (
        "conn", "created_at", "defaults", "encoding", "expires_at", "ident", "key", "last_used",
        "lease_stack", "leased_at", "reclaiming", "returning_since", "stopper",
    )  # fmt: skip

    def __init__(
        self,
        conn: Any,
        created_at: float,
        expires_at: float,
        defaults: tuple[Any, ...],
        encoding: str,
        last_used: float,
        stopper: Stopper | None = None,
    ) -> None:
        self.conn = conn
        self.ident = id(conn)  # its key in `leased` and `returning`: computed once, not per use
        self.created_at = created_at
        self.expires_at = expires_at  # created_at + jittered max_lifetime
        # (autocommit, isolation_level, readonly, deferrable) at connect
        self.defaults = defaults
        self.encoding = encoding  # client encoding at connect, set again after a reset callback
        self.last_used = last_used  # when it last became idle: drives health checks and reaping
        self.leased_at = 0.0
        self.key: Hashable | None = None  # the psycopg2-style key it was checked out with
        # Where getconn was called (max_lease): (file, line, function, None) per frame, oldest
        # first, as traceback.StackSummary.from_list takes them.
        self.lease_stack: list[tuple[str, int, str, None]] | None = None
        # While in `returning`: since when, and whether the pool itself is closing it (reclaim).
        self.returning_since = 0.0
        self.reclaiming = False
        # How to stop the connection while another thread uses it (a reclaim, closeall's
        # deadline), taken when it was opened; freed by whoever closes it (stopper.py).
        self.stopper = stopper


class Waiter(Bell):
    """A caller queued in getconn. `dispatch` fills in exactly one of slot/connect/error,
    then rings the waiter's bell (see bell.py for why a bell and not a Condition).

    A waiter that `dispatch` served finds everything it needs in these fields when it wakes,
    so it returns without taking the pool's lock again, and the thread that handed it a
    connection is not slowed by the waiter queueing up for the pool's lock behind it.
    """

    __slots__ = ("connect", "deadline", "enqueued_at", "error", "key", "slot")

    def __init__(
        self, key: Hashable | None, enqueued_at: float, deadline: float = math.inf
    ) -> None:
        super().__init__()
        self.key = key
        self.enqueued_at = enqueued_at
        self.deadline = deadline  # a waiter still queued long after it is an orphan
        self.slot: Slot | None = None  # served: this connection is now leased to the waiter
        # served: a slot was reserved, the waiter opens a connection itself (pools without
        # a background connector only: with one, the connector opens it)
        self.connect = False
        self.error: PoolError | None = None  # served: the pool closed while it waited

    @property
    def served(self) -> bool:
        return self.slot is not None or self.connect or self.error is not None


# Why a connection was discarded, for the counters of stats().
Discard = Literal["expired", "broken", "failed check"] | None


class Reservation:
    """Slots reserved for connects (counted in `connecting`) and not used yet.

    Whoever reserves holds one of these from *before* the reservation is made, and releases
    what is left in a ``finally``: each connect's outcome uses up one under the same lock as
    it is recorded, so an exception anywhere in between frees exactly what was not used.
    """

    __slots__ = ("left",)

    def __init__(self, left: int = 0) -> None:
        self.left = left


class MaintenancePlan:
    """What one maintenance pass decided; the pool carries it out after releasing the lock."""

    __slots__ = ("close", "expired", "reclaimed")

    def __init__(self) -> None:
        self.close: list[Slot] = []  # reaped or expired idle connections
        self.expired = 0  # of `close`: past max_lifetime (the others were reaped: max_idle)
        # Leases taken back after max_lease, parked in `returning` until the pool has closed
        # them.
        self.reclaimed: list[Slot] = []


class PoolState:
    """All mutable state of one pool. Every method must be called with the pool's lock held.

    Invariants (checked by `check_invariants`, which the property tests call after each step):

    * ``len(idle) + len(leased) + len(returning) + connecting <= maxconn``: a slot is counted
      from the moment it is reserved for a connect until the connection is discarded.
      The one exception is a pool that `resize` shrank below its size: it is then
      `shrinking` until it fits, and meanwhile nothing is idle and no connect starts, and
      every connection that becomes free, whatever state it comes from (returned, cleaned,
      pinged, or just opened by the connector or a refill), is closed instead (`_retire`).
      A connection leased when resize() was called, or being opened for a caller then,
      stays with its caller until returned.
    * A pool without `keeps_idle` (NullConnectionPool) has nothing idle: a connection
      that becomes free goes to the oldest waiter, or is closed (`_retire`).
    * A connection is in exactly one of `idle`, `leased`, `returning`; `keys` maps a key to a
      slot in `leased`, and each leased slot with a key is found under that key.
    * If anyone waits, nothing is idle: `dispatch` hands an idle connection to the first
      waiter at once, so a caller can never overtake one that queued before it (FIFO).
    * `idle` is a LIFO stack ordered by `last_used`: the top is the hottest connection and
      the bottom the coldest, which is where the reaper looks.
    """

    __slots__ = (
        "broken_returns", "checkouts", "closed", "connect_errors", "connect_failures",
        "connecting", "connections_closed", "connections_opened", "connector", "expired",
        "failed_checks", "failing_since", "idle", "idle_reaped", "keeps_idle", "keys",
        "last_connect_error", "leased", "leases_reclaimed", "next_connect_at", "options",
        "pending_keys", "returning", "shrinking", "timeouts", "wait_time", "waiters", "waits",
    )  # fmt: skip

    def __init__(
        self, options: PoolOptions, *, closed: bool = False, keeps_idle: bool = True
    ) -> None:
        self.options = options
        # False for a NullConnectionPool: a connection that becomes free with nobody waiting
        # for it is closed (`_retire`), not kept idle. Its returns are all closed anyway;
        # this catches the rest, such as a connection the connector opened for a waiter
        # that gave up while it connected.
        self.keeps_idle = keeps_idle
        self.idle: list[Slot] = []
        self.leased: dict[int, Slot] = {}  # slot.ident -> slot, checked out by a caller
        self.keys: dict[Hashable, Slot] = {}  # psycopg2-style key -> leased slot
        self.pending_keys: set[Hashable] = set()  # keys whose caller waits or connects
        self.returning: dict[int, Slot] = {}  # slot.ident -> slot, being cleaned on return
        self.connecting = 0  # slots reserved for connects in flight
        self.waiters: deque[Waiter] = deque()
        self.closed = closed  # a pool forked while closed stays closed in the child
        # resize() lowered maxconn below the size: connections that become free are closed
        # until the pool fits (see the class docstring). Read by putconn's fast path.
        self.shrinking = False
        # The background connector's bell (ThreadedConnectionPool), or None: then a waiter
        # that may grow the pool is given the right to connect and opens the connection
        # itself (SimpleConnectionPool, which starts no thread).
        self.connector: Bell | None = None
        # Connect back-off: no new connect starts before next_connect_at.
        self.connect_failures = 0
        self.next_connect_at = 0.0
        # When the current run of failed connects began (None while connects succeed); once
        # it has lasted reconnect_timeout, the pool calls reconnect_failed and starts anew.
        self.failing_since: float | None = None
        self.last_connect_error: BaseException | None = None
        # Counters, reported by stats(); they only grow.
        self.checkouts = 0
        self.waits = 0
        self.timeouts = 0
        self.wait_time = 0.0
        self.connections_opened = 0
        self.connect_errors = 0
        self.connections_closed = 0
        self.idle_reaped = 0
        self.expired = 0
        self.leases_reclaimed = 0
        self.broken_returns = 0
        self.failed_checks = 0

    # -- derived values -------------------------------------------------------------------

    @property
    def in_use(self) -> int:
        return len(self.leased) + len(self.returning)

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.leased) + len(self.returning) + self.connecting

    def can_connect(self, now: float) -> bool:
        """True if a new connection may be opened now: room, connect budget, no back-off."""
        return (
            self.size < self.options.maxconn
            and self.connecting < self.options.max_connecting
            and now >= self.next_connect_at
        )

    def use_connector(self, bell: Bell) -> None:
        """From now on, connects for waiters are the connector's (rung on `bell`)."""
        self.connector = bell

    def opened_initial(self, slots: list[Slot]) -> None:
        """The `minconn` connections opened before the pool is shared become idle."""
        self.idle.extend(slots)
        self.connections_opened += len(slots)

    # -- checkout -------------------------------------------------------------------------

    def take_sticky(self, key: Hashable) -> Slot | None:
        """psycopg2 semantics: the connection already checked out under `key`, if any, is
        handed out again. Raises PoolError if another thread is getting one for `key`."""
        slot = self.keys.get(key)
        if slot is not None:
            self.checkouts += 1
            return slot
        if key in self.pending_keys:
            raise PoolError(
                f"pool {self.options.name!r}: another thread is already getting a connection "
                f"with key {describe(key)}"
            )
        return None

    def hold_key(self, key: Hashable) -> None:
        """A caller with `key` is about to wait or connect: no other caller may meanwhile."""
        self.pending_keys.add(key)

    def release_key(self, key: Hashable) -> None:
        self.pending_keys.discard(key)

    def lease(self, slot: Slot, key: Hashable | None, now: float) -> None:
        """Record that `slot` is now checked out (with `key`, if given).

        An idle slot always has key None (`unlease` clears it).
        """
        slot.leased_at = now
        slot.key = key
        slot.lease_stack = None
        self.leased[slot.ident] = slot
        if key is not None:
            self.keys[key] = slot
        self.checkouts += 1

    def take_idle(self, key: Hashable | None, now: float) -> Slot | None:
        """The non-blocking core of getconn: lease the hottest idle connection, if any.

        Returns None when nothing is idle or when others are already queued (they go first).
        """
        if self.waiters or not self.idle:
            return None
        slot = self.idle.pop()
        if key is not None:
            self.lease(slot, key, now)
            return slot
        # lease(slot, None, now), inlined: this is the hottest line of the whole pool.
        slot.leased_at = now
        self.leased[slot.ident] = slot
        self.checkouts += 1
        return slot

    def reserve_connect(self, now: float, *, can_wait: bool = True) -> bool:
        """Reserve a slot for a connect if the pool may grow now and nobody queues ahead.

        The connect budget and the back-off make callers that can wait take turns. A caller
        that cannot wait (timeout=0, as with psycopg2.pool) only needs room in the pool: it
        connects, and gets the driver's error if the server is still down.
        """
        if self.waiters:
            return False
        if can_wait and not self.can_connect(now):
            return False
        if not can_wait and self.size >= self.options.maxconn:
            return False
        self._begin_connect(now)
        return True

    def _begin_connect(self, now: float) -> None:
        """Count a connect that starts now. A run of failed connects lasts only while the
        pool keeps retrying: a connect that starts well after the back-off allowed the
        next one follows a time when nothing needed a connection, so the failures before
        it were a different outage, and `reconnect_timeout` is counted from scratch."""
        self.connecting += 1
        if self.failing_since is not None and now > self.next_connect_at + self._retry_gap():
            self.failing_since = None

    def _retry_gap(self) -> float:
        # How late a retry may start and still be one: a waiter's is due when the back-off
        # ends, a refill's at the next maintenance pass; a second more for a busy machine.
        return BACKOFF_CAP + (self.options.maintenance_interval or 0.0) + 1.0

    def connected(self, slot: Slot, key: Hashable | None, now: float) -> bool:
        """A caller's reserved connect succeeded: the new connection is leased to it.

        Returns False if the pool was closed meanwhile: the caller closes the connection.
        """
        if not self._connect_succeeded():
            return False
        self.lease(slot, key, now)
        self.dispatch(now)  # the connect budget has room again: the next waiter may connect
        return True

    def connected_idle(self, slot: Slot, now: float, reservation: Reservation) -> bool:
        """A connect by the connector or a refill succeeded: the connection goes to the
        oldest waiter, or onto the idle stack. False if the pool was closed or shrunk
        meanwhile, or keeps nothing idle and its waiter gave up: the caller closes the
        connection."""
        reservation.left -= 1
        if not self._connect_succeeded():
            return False
        if self._retire():  # begun before resize() shrank the pool, or for nobody now
            self.connections_closed += 1
            return False
        self.idle.append(slot)
        self.dispatch(now)
        return True

    def _connect_succeeded(self) -> bool:
        self.connecting -= 1
        self.connections_opened += 1
        if self.closed:  # its opener closes it at once
            self.connections_closed += 1
            return False
        self.connect_failures = 0
        self.next_connect_at = 0.0
        self.failing_since = None
        return True

    def connect_failed(
        self,
        error: BaseException,
        now: float,
        jitter: float,
        reservation: Reservation | None = None,
    ) -> bool:
        """A reserved connect failed: free its slot and back off before the next attempt,
        for the back-off's delay times `jitter` (drawn by the caller between 0.5 and 1, so
        that pools that lost the server together do not retry together).

        A refill reserves several slots and stops at the first failure: it frees every slot
        left in its `reservation` at once.

        Returns True when connects have now been failing for `reconnect_timeout`: the pool
        then calls `reconnect_failed` (once, outside the lock), and the count starts anew,
        so a server that stays down is reported again every `reconnect_timeout`.
        """
        if reservation is None:
            self.connecting -= 1
        else:
            self.connecting -= reservation.left
            reservation.left = 0
        self.connect_errors += 1
        self.connect_failures += 1
        self.last_connect_error = error
        # Doubling stops long before the exponent matters: 2 ** 1024 would overflow a float
        # after ~1,025 failures in a row (half an hour of outage), here under the lock.
        doublings = min(self.connect_failures - 1, BACKOFF_MAX_DOUBLINGS)
        delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**doublings)
        self.next_connect_at = now + delay * jitter
        if self.connector is not None:
            self.connector.ring()  # it decides when to try again, for the waiters
        else:
            # Waiters asleep until their deadline must learn when the back-off ends.
            for waiter in self.waiters:
                waiter.ring()
        if self.failing_since is None:
            self.failing_since = now
        if self.closed or now - self.failing_since < self.options.reconnect_timeout:
            return False  # (closed meanwhile: nobody is retrying any more, nothing to report)
        self.failing_since = now
        return True

    # -- waiting --------------------------------------------------------------------------

    def enqueue(self, waiter: Waiter) -> None:
        max_waiting = self.options.max_waiting
        if max_waiting and len(self.waiters) >= max_waiting:
            raise TooManyWaiting(
                f"pool {self.options.name!r}: {len(self.waiters)} callers already waiting "
                f"(max_waiting={max_waiting})"
            )
        self.waiters.append(waiter)
        self.waits += 1
        self.dispatch(waiter.enqueued_at)

    def timed_out(self) -> None:
        """A caller that could not wait (or whose health check used up its time) leaves."""
        self.timeouts += 1

    def give_up(self, waiter: Waiter, now: float) -> None:
        """A waiter timed out unserved: take it out of the queue (if maintenance has not
        already taken it for an orphan)."""
        if waiter in self.waiters:
            self.waiters.remove(waiter)
        self.timeouts += 1
        self.wait_time += now - waiter.enqueued_at
        # Its leaving may let the next waiter open a connection.
        self.dispatch(now)

    def abandon(self, waiter: Waiter, now: float) -> Slot | None:
        """A waiter leaves by an exception: undo whatever `dispatch` had given it.

        Returns a connection it was handed that must be returned the long way (the pool is
        `shrinking`, or keeps nothing idle and nobody else waits: see `give_back` and
        `_retire`); the caller finishes that return after the lock."""
        if waiter.slot is not None:
            if not self._may_idle():
                self.begin_return(waiter.slot, now)  # `_retire` decides, in end_return
                return waiter.slot
            served = self.give_back(waiter.slot, now)
            if served is not None:
                served.ring()
        elif waiter.connect:
            self.connecting -= 1
            self.dispatch(now)
        elif waiter.error is None and waiter in self.waiters:  # not if it gave up already
            self.waiters.remove(waiter)
            self.wait_time += now - waiter.enqueued_at
            self.dispatch(now)
        return None

    def dispatch(self, now: float) -> None:
        """Serve waiters in arrival order: an idle connection, else the right to connect.

        This is the one place where a connection changes hands between callers. A waiter
        that is served is taken out of the queue *before* it wakes, so a waiter that has
        meanwhile timed out still finds its connection and keeps it: nothing is swallowed.

        With a background connector, waiters are never given the right to connect: the
        connector is rung instead, and the connection it opens comes back here through
        `connected_idle`, to whoever is then the oldest waiter. A waiter is so served by
        whichever comes first, a returned connection or a new one.
        """
        waiters = self.waiters
        while waiters:
            if self.idle:
                self._hand_over(self.idle.pop(), now).ring()
            elif self.connector is None and self.can_connect(now):
                waiter = waiters.popleft()
                self._begin_connect(now)
                waiter.connect = True
                self.wait_time += now - waiter.enqueued_at
                waiter.ring()
            else:
                if self.connector is not None and self.connect_wanted():
                    self.connector.ring()
                return

    def _hand_over(self, slot: Slot, now: float) -> Waiter:
        """Lease `slot` to the oldest waiter and take it out of the queue; return it, to be
        woken. Out of the queue, a served waiter is rung by nobody else, and never rearms
        its bell again (it returns as soon as it sees its slot): so the bell may be rung
        after the pool's lock is released, and a thread woken by it does not then block on
        the lock still held by the thread that woke it."""
        waiter = self.waiters.popleft()
        self.lease(slot, waiter.key, now)
        waiter.slot = slot
        self.wait_time += now - waiter.enqueued_at
        return waiter

    def connect_wanted(self) -> bool:
        """Should the connector open a connection (if the back-off and budget allow)?

        Only while waiters outnumber the connects in flight, and the pool has room: a spike
        of 50 callers at a pool whose connections come back in milliseconds starts one
        connect, not 50, and is served by the connections coming back.
        """
        return len(self.waiters) > self.connecting and self.size < self.options.maxconn

    def start_connect(self, now: float, reservation: Reservation) -> bool:
        """The connector's non-blocking core: reserve a slot for a connect if one is wanted
        and allowed now. The connection it opens goes to `connected_idle`."""
        if self.closed or not self.connect_wanted() or not self.can_connect(now):
            return False
        self._begin_connect(now)
        reservation.left += 1
        return True

    def release(self, reservation: Reservation, now: float) -> None:
        """Free the slots of `reservation` that no connect used (an exception cut it short)."""
        self.connecting -= reservation.left
        reservation.left = 0
        self.dispatch(now)

    # -- return ---------------------------------------------------------------------------

    def find_leased(self, conn: Any, key: Hashable | None) -> Slot:
        """The leased slot of `conn`, or a PoolError that names the misuse. Changes nothing."""
        slot = self.leased.get(id(conn))
        if slot is None or slot.conn is not conn:
            raise PoolError(self._describe_stranger(conn))
        if key is not None and not same_key(slot.key, key):
            raise PoolError(
                f"pool {self.options.name!r}: connection was checked out with key "
                f"{describe(slot.key)}, not {describe(key)}; it stays checked out"
            )
        return slot

    def _describe_stranger(self, conn: Any) -> str:
        name = self.options.name
        if any(slot.conn is conn for slot in self.idle):
            return f"pool {name!r}: connection returned twice (it is already idle in the pool)"
        returning = self.returning.get(id(conn))
        if returning is not None and returning.conn is conn:
            return f"pool {name!r}: connection returned twice (it is being returned now)"
        return f"pool {name!r}: trying to put a connection that is not checked out from this pool"

    def unlease(self, slot: Slot) -> None:
        del self.leased[slot.ident]
        if slot.key is not None:
            del self.keys[slot.key]
            slot.key = None

    def give_back(self, slot: Slot, now: float) -> Waiter | None:
        """A clean connection comes back: straight to the oldest waiter (nothing is idle
        while anyone waits, so `dispatch` would hand it this one), else on top of the idle
        stack. putconn inlines the second case (tests/test_fast_path.py compares them).

        Not while `shrinking`: then a return goes through `begin_return` and `end_return`,
        which decides whether the pool still has to close it.

        Returns the waiter served, whose bell the caller rings after releasing the lock.
        """
        if slot.key is not None:
            self.unlease(slot)
        else:
            del self.leased[slot.ident]  # unlease(slot), inlined for the common case
        slot.last_used = now
        if self.waiters:
            return self._hand_over(slot, now)
        self.idle.append(slot)
        return None

    def begin_return(self, slot: Slot, now: float) -> None:
        """A connection that needs cleaning comes back: park it while the pool cleans it."""
        self.unlease(slot)
        slot.returning_since = now
        self.returning[slot.ident] = slot

    def park_idle(self, slots: list[Slot], now: float) -> list[Slot]:
        """Take the given idle connections aside (into `returning`) to be checked outside
        the lock; `end_return` puts each back or drops it. Returns those still idle."""
        parked = [slot for slot in slots if slot in self.idle]
        for slot in parked:
            self.idle.remove(slot)
            slot.returning_since = now
            self.returning[slot.ident] = slot
        return parked

    def end_return(self, slot: Slot, now: float, keep: bool, why: Discard = None) -> bool:
        """Cleaning finished: keep the connection (idle, on top: just used) or drop it (its
        slot is freed), counting `why` it was dropped.

        Returns whether it was kept: never when the pool was closed meanwhile, or is still
        over a maxconn that resize() lowered (`_retire`), in which cases the caller, who
        holds the connection, closes it. Never either when maintenance took the slot back
        (it stayed in `returning` past max_lease) and closes it itself.
        """
        return self._end_aside(slot, now, keep, why, used=True)

    def end_check(self, slot: Slot, now: float, alive: bool) -> bool:
        """A ping of an idle connection taken aside (`park_idle`: check() or the idle
        probe) finished: like `end_return`, but a check is not a use. The connection goes
        back to its place in the idle stack with its `last_used` unchanged: otherwise a
        health probe calling check() more often than max_idle, or NOTIFYs arriving on a
        LISTENing connection, would keep every idle connection from ever being reaped."""
        return self._end_aside(slot, now, alive, None if alive else "failed check", used=False)

    def _end_aside(self, slot: Slot, now: float, keep: bool, why: Discard, used: bool) -> bool:
        if slot.reclaiming or self.returning.get(slot.ident) is not slot:
            return False  # reclaimed: the reclaim frees the slot once it has closed it
        del self.returning[slot.ident]
        if not keep:
            self._count_discard(why)
        keep = keep and not self.closed and not self._retire()
        if keep and used:
            slot.last_used = now
            self.idle.append(slot)
        elif keep:
            bisect.insort(self.idle, slot, key=_last_used)  # the stack stays ordered
        else:
            self.connections_closed += 1
        self.dispatch(now)
        return keep

    def drop_leased(self, slot: Slot, now: float, why: Discard) -> None:
        """A connection just leased fails its checkout check (dead, or expired): drop it.

        The lease is undone, count included: `checkouts` counts connections handed out.
        Nothing more changes if maintenance reclaimed it meanwhile (max_lease).
        """
        self._count_discard(why)
        if self.leased.get(slot.ident) is not slot:
            return
        self.unlease(slot)
        self.checkouts -= 1
        self.connections_closed += 1
        self.dispatch(now)

    def end_reclaim(self, slot: Slot, now: float) -> None:
        """The pool has closed a connection it took back (`plan_maintenance`): free its slot."""
        if self.returning.get(slot.ident) is slot:
            del self.returning[slot.ident]
            self.connections_closed += 1
            self.dispatch(now)

    def _may_idle(self) -> bool:
        """Can a connection becoming free go straight back (`give_back`)? Not while the pool
        is `shrinking`, nor in a pool that keeps nothing idle with nobody waiting: then it
        goes the long way (`begin_return`, `end_return`), where `_retire` closes it."""
        return not self.shrinking and (self.keeps_idle or bool(self.waiters))

    def _retire(self) -> bool:
        """Close the connection now becoming free (already out of the count) instead of
        keeping it? Yes while the pool is `shrinking` and still has maxconn without it;
        the pool fits again once that is no longer so, and stops shrinking. Yes also in a
        pool that keeps nothing idle (`keeps_idle`), unless someone waits for it."""
        if self.shrinking:
            maxconn = self.options.maxconn
            self.shrinking = self.size > maxconn
            if self.size >= maxconn:
                return True
        return not self.keeps_idle and not self.waiters

    def _count_discard(self, why: Discard) -> None:
        if why == "expired":
            self.expired += 1
        elif why == "broken":
            self.broken_returns += 1
        elif why == "failed check":
            self.failed_checks += 1

    # -- maintenance ----------------------------------------------------------------------

    def plan_maintenance(self, now: float) -> MaintenancePlan:
        """Reap idle and expired connections, reclaim forgotten leases, reserve refills."""
        plan = MaintenancePlan()
        options = self.options
        keep: list[Slot] = []
        # Expired connections go whatever minconn says: refill replaces them.
        for slot in self.idle:
            if now >= slot.expires_at:
                plan.close.append(slot)
                plan.expired += 1
            else:
                keep.append(slot)
        # Reap from the bottom of the stack (the coldest) while above minconn.
        excess = self.size - len(plan.close) - options.minconn
        reaped = 0
        while reaped < excess and reaped < len(keep):
            if now - keep[reaped].last_used < options.max_idle:
                break  # the stack is ordered by last_used: everything above is younger
            reaped += 1
        plan.close.extend(keep[:reaped])
        self.expired += plan.expired
        self.idle_reaped += reaped
        self.idle = keep[reaped:]
        self.connections_closed += len(plan.close)
        if options.max_lease is not None:
            for slot in list(self.leased.values()):
                if now - slot.leased_at >= options.max_lease:
                    # Into `returning`, not freed: the connection is still open (maybe running
                    # its borrower's query) and keeps its slot, so no replacement can push the
                    # server past maxconn, until the pool has closed it (`end_return`).
                    self.begin_return(slot, now)
                    slot.reclaiming = True
                    plan.reclaimed.append(slot)
            self.leases_reclaimed += len(plan.reclaimed)
            # A return (or idle probe) that has not finished after max_lease lost its way: an
            # exception reached the thread doing it between its I/O and its bookkeeping. The
            # slot is taken back the same way, so no slot is lost for good.
            # The same goes for a reclaim that an exception cut short: it is tried again.
            for slot in list(self.returning.values()):
                if slot not in plan.reclaimed and now - slot.returning_since >= options.max_lease:
                    self.leases_reclaimed += not slot.reclaiming
                    slot.reclaiming = True
                    slot.returning_since = now
                    plan.reclaimed.append(slot)
        # A caller whose wait an exception ended before it could leave the queue would stay
        # first in line for ever, and every connection would be handed to nobody.
        orphans = [w for w in self.waiters if now > w.deadline + ORPHAN_GRACE]
        for waiter in orphans:
            self.waiters.remove(waiter)
        self.dispatch(now)
        return plan

    def reserve_refills(self, now: float, reservation: Reservation) -> None:
        """Reserve slots to refill to minconn, within the connect budget and the back-off."""
        while self.size < self.options.minconn and self.can_connect(now):
            self._begin_connect(now)
            reservation.left += 1

    # -- closing --------------------------------------------------------------------------

    def close(self, error: PoolError, in_use: bool = True) -> list[Slot]:
        """Close the pool: wake every waiter with `error`, return every slot to close.

        With `in_use=False`, checked-out connections stay in `leased`, to be closed by
        `putconn` when their borrowers return them.
        """
        self.closed = True
        for waiter in self.waiters:
            waiter.error = error
            waiter.ring()
        self.waiters.clear()
        if self.connector is not None:
            self.connector.ring()  # it finds the pool closed and ends
        slots = self.idle
        self.idle = []
        if in_use:
            slots += self.leased.values()
            self.leased.clear()
            self.keys.clear()
        self.connections_closed += len(slots)
        # Connections being returned or connected are closed by their owners on finding
        # the pool closed; they stay counted until then.
        return slots

    def close_leased(self) -> list[Slot]:
        """A drain ran out of time: take every connection still checked out, to close."""
        slots = list(self.leased.values())
        self.leased.clear()
        self.keys.clear()
        self.connections_closed += len(slots)
        return slots

    def reopen(self) -> None:
        """open() of a pool created with open=False: callers are served from now on."""
        self.closed = False

    def resize(self, options: PoolOptions, now: float) -> list[Slot]:
        """New sizes: return the idle connections to close now (the coldest first) so that
        the pool fits the new maxconn. If it still does not (too many are checked out,
        being returned or checked, or being opened), the pool is `shrinking` until it
        fits: see `_retire`. Growing ends that at once, and serves waiters."""
        self.options = options
        excess = self.size - options.maxconn
        close = self.idle[: max(excess, 0)]  # the bottom of the stack is the coldest
        del self.idle[: len(close)]
        self.connections_closed += len(close)
        self.shrinking = self.size > options.maxconn  # then nothing is idle any more
        self.dispatch(now)
        return close

    # -- observing ------------------------------------------------------------------------

    def snapshot(self, reset: bool = False) -> PoolStats:
        """The gauges and counters now; with `reset`, the counters start again from zero."""
        options = self.options
        stats = PoolStats(
            name=options.name,
            minconn=options.minconn,
            maxconn=options.maxconn,
            size=self.size,
            idle=len(self.idle),
            in_use=self.in_use,
            connecting=self.connecting,
            waiting=len(self.waiters),
            **{counter: getattr(self, counter) for counter in COUNTERS},
        )
        if reset:
            for counter in COUNTERS:
                setattr(self, counter, type(getattr(self, counter))())  # 0, or 0.0
        return stats

    def check_invariants(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent (used by tests)."""
        # Over maxconn only while shrinking after resize(), and then nothing may be idle.
        assert self.size <= self.options.maxconn or self.shrinking, "more connections than maxconn"
        assert not (self.shrinking and self.idle), "an idle connection while shrinking"
        assert self.connecting >= 0
        assert not (self.waiters and self.idle), "a waiter starves next to an idle connection"
        assert self.keeps_idle or not self.idle, "an idle connection in a pool that keeps none"
        conns = [s.ident for s in self.idle] + list(self.leased) + list(self.returning)
        assert len(conns) == len(set(conns)), "a connection is in two places"
        for key, slot in self.keys.items():
            assert self.leased.get(slot.ident) is slot and slot.key == key, "bad key"
        used = [s.last_used for s in self.idle]
        assert used == sorted(used), "idle stack is not ordered by last use"

"""`AbstractConnectionPool`: the psycopg2.pool API, and the steps of a checkout and a return.

How a request flows (the numbers are those of the "step 1" and "step 2" sections below;
`getconn`'s fast path does both for the common case):

1. Under the lock (`_checkout`), take the hottest idle connection, or reserve a slot to
   open a new one, or queue as a waiter; a waiter then sleeps, without the lock, until
   `PoolState.dispatch` serves it (`_await`).
2. Release the lock. Only now do anything slow: open the connection, or ping one that has
   been idle a while. A dead one is dropped and the loop tries again within the deadline.

`putconn` is the mirror image: a connection that comes back clean goes straight onto the
idle stack (one short critical section); one that needs a rollback, a session reset or the
user's `reset` callback is parked in `returning`, cleaned outside the lock, then kept or
closed. Decisions live in `state.py`; this module does locking and I/O, in that order.

The lifecycle methods (`open`, `wait`, `resize`, `closeall`) are here too; `check` is with
maintenance. The layers below: `maintenance.py` (reaping, expiry, reclaims, refills,
`check`) and `base.py` (the settings, the state and its lock, `_record`, opening a
connection and its back-off, errors, fork).
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from types import FrameType, TracebackType
from typing import Any

from psycopg2.extensions import STATUS_READY, TRANSACTION_STATUS_IDLE
from psycopg2.extensions import connection as Connection

from . import connection as conn_ops
from .base import NOW, PING_TIMEOUT, PING_TIMEOUT_MIN
from .errors import PoolClosed, PoolTimeout
from .log import logger
from .maintenance import PoolMaintenance
from .options import check_options, check_timeout
from .state import Slot, Waiter, same_key

# How often closeall(timeout=...) and wait() look again (a startup or shutdown path, not
# the checkout's: a poll keeps it simple).
DRAIN_POLL = 0.01


class Checkout:
    """What `_checkout` got for a getconn: a leased slot, and how much checking it needs."""

    __slots__ = ("deadline", "slot", "vetted")

    def __init__(self, slot: Slot, deadline: float, vetted: bool = False) -> None:
        self.slot = slot
        self.deadline = deadline  # the getconn's deadline: a retry after a failed check keeps it
        self.vetted = vetted  # just opened, or a sticky key's repeat: no health check needed


class AbstractConnectionPool(PoolMaintenance):
    """A pool of psycopg2 connections; see `ThreadedConnectionPool` for the one to use.

    `minconn`, `maxconn`, `*args` and `**kwargs` mean what they mean in psycopg2.pool: the
    pool keeps at least `minconn` and at most `maxconn` connections, each opened with
    `psycopg2.connect(*args, **kwargs)`. The keyword-only options are pgpool's own: the
    options table (README, API reference) says what each means.
    """

    # A caller that finds nothing idle in a pool with a connector queues for it, even with
    # room to connect: a returned connection may serve it before any connect would.
    # NullConnectionPool closes every returned connection, so its callers connect
    # themselves while there is room (the connector still serves those that queue).
    _connects_inline = False

    # For readers of the code: the constructor is `PoolBase.__init__` (base.py), as are
    # `minconn`, `maxconn`, `closed`, `name` and `stats()`; `maintain()` and `check()` are
    # `PoolMaintenance`'s (maintenance.py).

    # -- the psycopg2.pool API ------------------------------------------------------------

    def getconn(self, key: Hashable | None = None, timeout: float | None = None) -> Connection:
        """Check out a connection, waiting up to `timeout` seconds (default: the pool's).

        With a `key`, the same connection is returned while it is checked out under that key,
        as in psycopg2.pool. Raises PoolTimeout when the deadline passes, PoolClosed if the
        pool is or gets closed, TooManyWaiting when `max_waiting` callers already queue, and
        the driver's own error (psycopg2.OperationalError) when opening a connection fails.
        The connection returned is open, idle (no transaction) and has its session
        attributes as they were when it was opened.
        """
        # Fast path: no key, the pool's own timeout. One critical section either leases the
        # hottest idle connection or, with none idle, queues the caller for the connector or
        # a returned connection. Keys, explicit timeouts and connecting inline are in
        # _getconn_slow.
        state = self._state
        if key is None and timeout is None:
            with self._lock:
                now = self._clock()
                idle = state.idle
                # Nobody may be queued ahead of us (FIFO). Once closed, idle is empty.
                if idle and not state.waiters:
                    # PoolState.take_idle(None, now), inlined: the pool's hottest lines
                    # (tests/test_fast_path.py checks that both do the same).
                    slot = idle.pop()
                    slot.leased_at = now
                    state.leased[slot.ident] = slot
                    state.checkouts += 1
                    # Used moments ago (idle since last_used) and not expired: handed out
                    # from here, without a health check. _vet_or_retry sees to the others.
                    if now - slot.last_used <= self._check_after and now < slot.expires_at:
                        conn: Connection = slot.conn
                        return conn
                    waiter = None
                elif self._queue_at_once and not state.closed:
                    slot = None
                    waiter = Waiter(None, now, now + self._options.timeout)
                    state.enqueue(waiter)  # may serve it at once, or raise TooManyWaiting
                else:
                    slot = waiter = None
            if slot is None and waiter is None:
                return self._getconn_slow(None, None)
            try:
                if slot is None:
                    assert waiter is not None
                    slot = self._await(waiter, now + self._options.timeout, now)
                    assert slot is not None  # with a connector, a waiter is never told to connect
                    # Handed over by a return or a fresh connect: the same check as above.
                    leased_at = slot.leased_at
                    if (
                        leased_at - slot.last_used <= self._check_after
                        and leased_at < slot.expires_at
                    ):
                        conn = slot.conn
                        return conn
                return self._vet_or_retry(slot, None, now + self._options.timeout)
            except PoolTimeout as error:
                self._log_timeout(error)  # here, not where it was raised: under the lock
                raise
        return self._getconn_slow(key, timeout)

    def _getconn_slow(self, key: Hashable | None, timeout: float | None) -> Connection:
        wait = self._options.timeout if timeout is None else check_timeout(timeout)
        try:
            checkout = self._checkout(key, wait, None)
            if checkout.vetted:
                return self._handed_out(checkout.slot)
            return self._vet_or_retry(checkout.slot, key, checkout.deadline)
        except PoolTimeout as error:
            self._log_timeout(error)  # here, not where it was raised: under the lock
            raise

    def _log_timeout(self, error: PoolTimeout) -> None:
        """Log a timeout once the pool's lock is released: a handler may write to a file."""
        logger.debug("pool %r: a caller timed out after waiting: %s", self.name, error)

    def _vet_or_retry(self, slot: Slot, key: Hashable | None, deadline: float) -> Connection:
        """Step 2, without the lock: a connection idle for a while may have died. Drop dead
        or expired ones and check out again, within the same deadline."""
        timeout = deadline - slot.leased_at
        while not self._still_good(slot, deadline):
            if timeout > 0 and self._clock() >= deadline:  # the check used up the time
                self._record(self._state.timed_out)
                raise self._timeout_error(timeout, timeout)
            checkout = self._checkout(key, 0.0, deadline)
            slot = checkout.slot
            if checkout.vetted:
                break
        return self._handed_out(slot)

    def _handed_out(self, slot: Slot) -> Connection:
        if self._track_leases:
            # Where getconn was called, from the first frame outside pgpool: logged if this
            # connection is never returned.
            frame = sys._getframe(1)
            while frame.f_back is not None and frame.f_globals["__name__"].startswith("pgpool"):
                frame = frame.f_back
            # (file, line, function) of each frame, oldest first; the source lines are read
            # only if a reclaim logs them. traceback.extract_stack builds a FrameSummary per
            # frame: from a web framework's view, 60 frames deep, that cost ~50 µs a checkout.
            stack: list[tuple[str, int, str, None]] = []
            caller: FrameType | None = frame
            while caller is not None:
                code = caller.f_code
                stack.append((code.co_filename, caller.f_lineno, code.co_name, None))
                caller = caller.f_back
            stack.reverse()
            slot.lease_stack = stack
        conn: Connection = slot.conn
        return conn

    def putconn(self, conn: Any = None, key: Hashable | None = None, close: bool = False) -> None:
        """Return a connection. It is rolled back and reset if needed, or closed if it is
        broken, expired, or `close` is true. Returning a connection that is not checked out
        from this pool, twice, or with the wrong key raises PoolError and changes nothing.
        """
        state = self._state
        served = None
        ident = id(conn)
        with self._lock:
            slot = state.leased.get(ident)
            if slot is None or slot.conn is not conn or state.closed:
                slot = self._put_stranger(conn, key)
                if slot is None:
                    return None
                close = True  # a pool closed with closeall(in_use=False) closes it now
            elif key is not None and not same_key(slot.key, key):
                state.find_leased(conn, key)  # raises PoolError naming both keys
            # Fast path: reading these attributes costs no round trip. A connection that is
            # open, outside any transaction (connection.is_reusable, inlined: libpq's status
            # and psycopg2's), with its session attributes untouched and no reset callback to
            # run, goes straight back, without cleaning.
            elif (
                not close
                and not conn.closed
                and conn.get_transaction_status() == TRANSACTION_STATUS_IDLE
                and conn.status == STATUS_READY
                and self._reset is None
                # The session attributes as they were at connect (connection.SESSION_ATTRIBUTES),
                # one at a time: no tuple built, and the first difference ends the test.
                # psycopg2 returns True, False or None for three of them, so `is` decides as
                # `==` would, without a rich comparison; a connection class that returned
                # something else would only take the long way, where clean() compares with !=.
                and conn.autocommit is (defaults := slot.defaults)[0]
                and conn.isolation_level == defaults[1]
                and conn.readonly is defaults[2]
                and conn.deferrable is defaults[3]
            ):
                now = self._clock()
                # Shrinking after resize(): the long way, where end_return decides.
                if now < slot.expires_at and not state.shrinking:
                    if slot.key is None and not state.waiters:
                        # PoolState.give_back(slot, now), inlined for the common case
                        # (tests/test_fast_path.py checks that both do the same).
                        del state.leased[ident]
                        slot.last_used = now
                        state.idle.append(slot)
                        return None
                    served = state.give_back(slot, now)
                    if served is None:
                        return None  # a sticky key's connection, back on the idle stack
            if served is None:
                state.begin_return(
                    slot, self._clock()
                )  # to be cleaned, or closed, outside the lock
        if served is not None:
            served.ring()  # after releasing the lock: see PoolState._hand_over
            return None
        self._finish_return(slot, close)
        return None

    def _put_stranger(self, conn: Any, key: Hashable | None) -> Slot | None:
        """putconn of a connection that is not leased, or to a closed pool (lock held).

        Returns the slot of a connection left to its borrower by `closeall(in_use=False)`,
        to be closed now; None when there is nothing to do; raises PoolError on misuse.
        """
        state = self._state
        if conn in self._reclaimed:
            return None  # taken back after max_lease: closed (or being closed) by the pool
        if state.closed:
            slot = state.leased.get(id(conn))
            if slot is None or slot.conn is not conn:
                raise self._closed_error()
            return slot
        state.find_leased(conn, key)  # raises PoolError saying what is wrong
        raise AssertionError("find_leased raises for a connection not leased")  # pragma: no cover

    def closeall(self, *, in_use: bool = True, timeout: float | None = None) -> None:
        """Close every connection, idle and checked out (as psycopg2.pool does), and wake
        every waiter with PoolClosed. Calling it twice raises PoolClosed. A pool created with
        ``open=False`` and never opened is closed for good, without an error.

        With `timeout` (seconds), drain first: hand out nothing more, close idle connections,
        let borrowers return theirs (each is closed as it comes back) for up to `timeout`
        seconds, then stop the ones still out as a `max_lease` reclaim does: the server
        cancels their queries (the requests get at most a second more), their sockets are
        cut, and they are closed, so a borrower busy in a long query does not hold the call
        up. With `in_use=False`, checked-out connections
        are left to their borrowers and closed when returned. Use it at interpreter exit:
        psycopg2's close() waits for a query running on the connection, so closing one in
        use can keep a process from exiting.
        """
        draining = timeout is not None
        if draining:
            deadline = self._clock() + check_timeout(timeout)
        with self._lock:
            if self._state.closed:
                if self._opened:
                    raise self._closed_error()
                # Never opened (open=False): now closed for good, quietly (psycopg_pool's
                # close() is quiet too, but leaves such a pool openable): a shutdown hook
                # that ran must not be undone by a late open(), which raises from now on.
                self._opened = True
            error = PoolClosed(f"pool {self.name!r} was closed")
            slots = self._state.close(error, in_use and not draining)
        for slot in slots:
            conn_ops.discard(slot)
        if draining:
            while self._clock() < deadline and self.stats().in_use:
                time.sleep(DRAIN_POLL)  # returns close their connections as they come back
            if in_use:
                with self._lock:
                    slots = self._state.close_leased()
                # Busy borrowers' connections: a plain close() would wait for their queries.
                self._stop(slots, PING_TIMEOUT_MIN)
        logger.debug("pool %r closed", self.name)

    # -- lifecycle: open later, wait, resize (check is in maintenance.py) -----------------

    def open(self, wait: bool = False, timeout: float = 30.0) -> None:
        """Open a pool created with ``open=False`` (in a pre-fork master, an app factory).

        A ThreadedConnectionPool starts its connector, which opens `minconn` connections in
        the background, retrying with its back-off while the server is down; with `wait`,
        this call then blocks until they are ready (see `wait`). A SimpleConnectionPool, with
        no thread, opens them here and raises the driver's error if it cannot. Opening an
        open pool opens nothing, but with `wait` it waits all the same (as psycopg_pool's
        does): a second thread's open(wait=True) must not return before the first one's.
        A pool closed by closeall() cannot be opened again.
        """
        check_timeout(timeout)
        with self._lock:
            opening = not self._opened
            if opening:
                self._opened = True
                self._state.reopen()
            elif self._state.closed:
                raise self._closed_error()
        if opening:
            logger.debug("pool %r opened", self.name)
            self._start()
        if wait:
            self.wait(timeout)

    def _start(self) -> None:
        """Begin work after open(): a pool without a background thread connects here."""
        self._refill(fail=True, until_full=True)

    def wait(self, timeout: float = 30.0) -> None:
        """Block until `minconn` connections are open, or raise PoolTimeout after `timeout`
        seconds, naming the last connect error if connects are failing."""
        deadline = self._clock() + check_timeout(timeout)
        while True:
            with self._lock:
                state = self._state
                if state.closed:
                    raise self._closed_error()
                ready = state.size - state.connecting
                if ready >= self.minconn:
                    return
                now = self._clock()
                if now >= deadline:
                    error = self._timeout_error(timeout, timeout)
                    message = (
                        f"pool {self.name!r}: {ready} of minconn {self.minconn} ready; {error}"
                    )
                    raise PoolTimeout(message) from error.__cause__
            time.sleep(min(DRAIN_POLL, max(deadline - now, 0.0)))

    def resize(self, minconn: int, maxconn: int) -> None:
        """Change `minconn` and `maxconn` while the pool runs.

        Shrinking closes idle connections above the new `maxconn` at once and then, until the
        pool fits, every connection that becomes free: returned, done being cleaned or
        checked, or just opened by a connect already under way (what was checked out, or
        being opened for a caller, stays with its caller until returned). Nothing is handed
        out meanwhile, and it never opens more than the new `maxconn` afterwards. Growing
        serves waiters at once (a shrink still under way ends) and opens connections up to
        the new `minconn`. Bad sizes raise the same errors as the constructor and change
        nothing.
        """
        options = check_options(self._options._replace(minconn=minconn, maxconn=maxconn))
        with self._lock:
            if self._state.closed:
                raise self._closed_error()
            self._options = options
            slots = self._state.resize(options, self._clock())
        for slot in slots:
            conn_ops.discard(slot)
        logger.debug(
            "pool %r resized to (%d, %d), closing %d idle", self.name, minconn, maxconn, len(slots)
        )
        self._refill(until_full=True)

    # -- pgpool additions: connection(), and the pool as a context manager ----------------

    @contextmanager
    def connection(self, timeout: float | None = None) -> Iterator[Connection]:
        """`with pool.connection() as conn:` commits on success, rolls back on an exception,
        and always returns the connection."""
        conn = self.getconn(timeout=timeout)
        try:
            yield conn
            if not conn.closed:
                conn.commit()  # no round trip when there is no transaction
        finally:
            # On an exception putconn rolls back. A pool closed meanwhile has closed the
            # connection (closeall) or closes it now (closeall(in_use=False)).
            with contextlib.suppress(PoolClosed):
                self.putconn(conn)

    def __enter__(self) -> AbstractConnectionPool:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.closed:
            self.closeall()

    # -- step 1: under the lock, and a waiter's sleep without it --------------------------

    def _checkout(self, key: Hashable | None, wait: float, deadline: float | None) -> Checkout:
        """Lease an idle connection, or open one, or wait (`wait` seconds, or until the
        `deadline` of a getconn that is trying again)."""
        state = self._state
        waiter = None
        with self._lock:
            now = self._clock()
            if deadline is None:
                deadline = now + wait
            if state.closed:
                raise self._closed_error()
            if key is not None:
                sticky = state.take_sticky(key)  # or PoolError if another caller gets it
                if sticky is not None:  # psycopg2 semantics: same key, same connection
                    return Checkout(sticky, deadline, vetted=True)
            slot = state.take_idle(key, now)
            if slot is not None:
                return Checkout(slot, deadline)
            if now >= deadline:  # a caller that cannot wait connects if there is room
                if not state.reserve_connect(now, can_wait=False):
                    state.timed_out()
                    raise self._timeout_error(0.0, deadline - now)
            # With a connector, a caller that can wait queues, and is served by whichever
            # comes first: a returned connection or the connector's new one. Where nothing
            # ever comes back (NullConnectionPool), a caller with room connects itself.
            elif (
                state.connector is not None and not self._connects_inline
            ) or not state.reserve_connect(now):
                waiter = Waiter(key, now, deadline)
                state.enqueue(waiter)  # may serve it at once, or raise TooManyWaiting
            if key is not None:
                state.hold_key(key)  # until the connection is leased under the key
        try:
            if waiter is not None:
                slot = self._await(waiter, deadline, now)
                if slot is not None:
                    return Checkout(slot, deadline)
            # A slot is reserved for us: open the connection without holding the lock.
            return Checkout(self._open_reserved(key), deadline, vetted=True)
        finally:
            if key is not None:
                self._record(state.release_key, key)

    def _await(self, waiter: Waiter, deadline: float, now: float) -> Slot | None:
        """Sleep until `dispatch` serves the waiter, or the deadline passes (lock not held).
        `now` is when the waiter was queued.

        Returns the slot leased to us, or None when we were given the right to connect.
        """
        state = self._state
        try:
            while True:
                # Wake at the deadline, or (without a connector) when a connect back-off
                # ends: we may connect then.
                until = deadline
                if state.connector is None and now < state.next_connect_at < until:
                    until = state.next_connect_at
                if now < until:
                    waiter.sleep(until - now)
                    if waiter.slot is not None:
                        return waiter.slot  # the common case: served, no need for the lock
                with self._lock:
                    waiter.rearm()
                    now = self._clock()
                    if not waiter.served:
                        state.dispatch(now)  # a back-off may have ended: we may connect now
                    if waiter.served:
                        break
                    if now >= deadline:
                        state.give_up(waiter, now)
                        raise self._timeout_error(
                            now - waiter.enqueued_at, deadline - waiter.enqueued_at
                        )
        except PoolTimeout:
            raise  # gave up under the lock: nothing to undo
        except BaseException:
            # Interrupted (a signal handler raised, say): give back whatever we were handed.
            aside = self._record(state.abandon, waiter, NOW)
            if aside is not None:  # handed one it may close: PoolState._may_idle
                self._finish_return(aside, False)
            raise
        if waiter.error is not None:
            raise waiter.error
        return waiter.slot

    # -- step 2, and a return's cleaning: without the lock --------------------------------

    def _open_reserved(self, key: Hashable | None) -> Slot:
        """Open a connection into a slot reserved under the lock, and lease it to the caller."""
        state = self._state
        try:
            slot = self._open_slot()
        except BaseException as error:
            self._connect_failed(error)
            raise  # the driver's own error, unchanged
        if not self._record(state.connected, slot, key, NOW):
            conn_ops.discard(slot)  # the pool was closed meanwhile
            raise self._closed_error()
        return slot

    def _still_good(self, slot: Slot, deadline: float) -> bool:
        """Vet a connection taken from the idle stack; drop it if it expired or died."""
        now = slot.leased_at
        expired = now >= slot.expires_at
        if not expired and now - slot.last_used <= self._options.health_check_after:
            return True  # used moments ago: under steady load, no extra round trip
        interrupted: BaseException | None = None
        if not expired:
            try:
                timeout = min(PING_TIMEOUT, max(deadline - now, PING_TIMEOUT_MIN))
                if conn_ops.ping(slot.conn, timeout):
                    return True
            except BaseException as exc:  # KeyboardInterrupt, say: free the slot, then raise
                interrupted = exc
        state = self._state
        self._record(state.drop_leased, slot, now, "expired" if expired else "failed check")
        why = "expired" if expired else "failed its health check"
        logger.info("pool %r: dropping a connection that %s", self.name, why)
        conn_ops.discard(slot)
        if interrupted is not None:
            raise interrupted
        return False

    def _finish_return(self, slot: Slot, close: bool) -> None:
        """Clean a returned connection outside the lock, then keep it or close it."""
        conn = slot.conn
        expired = self._clock() >= slot.expires_at
        interrupted: BaseException | None = None
        try:
            keep = (
                not close
                and not expired
                and conn_ops.clean(conn, slot.defaults, slot.encoding, self._reset)
            )
        except BaseException as exc:  # KeyboardInterrupt in a reset callback: free the slot
            keep, interrupted = False, exc
        state = self._state
        why = None if close else "expired" if expired else "broken"
        if why is not None and not keep:
            logger.debug("pool %r: closing a returned connection: %s", self.name, why)
        keep = self._record(state.end_return, slot, NOW, keep, why)
        if not keep:
            conn_ops.discard(slot)
        if interrupted is not None:
            raise interrupted

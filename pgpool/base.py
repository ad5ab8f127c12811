"""`PoolBase`: what every part of a pool stands on.

The constructor of every pool (`PoolBase.__init__`: the upper layers have none), with the
attributes psycopg2.pool has; a pool's settings (`PoolOptions`), its bookkeeping
(`PoolState`) and the one lock that guards it; `_record`, the one way the outcome of I/O
done without the lock gets back into the bookkeeping; opening one connection
(`_open_slot`), the first `minconn` (`_open_initial`), and one more for a waiter or a
refill, with the back-off and `reconnect_failed` when it fails (`_refill_one`,
`_connect_failed`); the errors the pool raises; the
snapshot (`stats`); the process's live pools (`live_pools`, read by metrics.py and by the
fork handler); and what a forked child does with its parent's pool.

The pool is built in three layers, each a module: this one; `maintenance.py`, which keeps
the pool healthy between requests; and `pool.py`, the psycopg2.pool API and the lifecycle
methods, with the checkout and return paths. Each layer uses only the ones below it.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg2
from psycopg2.extensions import TRANSACTION_STATUS_IDLE, TRANSACTION_STATUS_INERROR

from . import connection as conn_ops
from . import watchdog
from .errors import PoolClosed, PoolError, PoolTimeout
from .log import logger
from .options import PoolOptions, check_options
from .state import LIFETIME_JITTER, PoolState, Reservation, Slot
from .stats import PoolStats
from .stopper import Stopper

T = TypeVar("T")
NOW = object()  # see PoolBase._record

# How long a ping (or a cancel) may take. Maintenance's idle probe and reclaims
# and check() (maintenance.py) use PING_TIMEOUT. A checkout's health check
# (_still_good, pool.py) gets what the caller has left of its deadline, within these
# bounds: a caller with timeout=0 still gets its connection checked, and one with a 30 s
# deadline does not spend it all on a server that has gone silent.
PING_TIMEOUT = 5.0
PING_TIMEOUT_MIN = 1.0

_pool_numbers = itertools.count(1)


def jitter(low: float) -> float:
    """A random factor between `low` and 1, for expiries and back-offs: connections opened
    together are not all replaced, nor retried, at the same moment.

    Drawn here, outside the pool's lock, and passed to PoolState, whose transitions stay
    deterministic. `random` is imported on the first call: it costs `import pgpool` about
    0.5 ms (benchmarks/imports.py), and a pool needs it only once it connects.
    """
    import random  # after the first call, a look-up in sys.modules

    return random.uniform(low, 1.0)


# Every pool of the process, for metrics: weak references, so that listing a pool does not
# keep it alive. A pool registers itself as its constructor ends, in whichever thread made
# it, while a scrape may be reading the list in another: both take this lock. The references
# have no callbacks: a WeakSet's remove their item whenever the garbage collector runs, in any
# thread, which no lock of ours can hold off, and a copy running then raises "Set changed size
# during iteration". Dead references are dropped instead when the list has doubled since the
# last sweep, so registering stays O(1) on average.
_live_pools: list[weakref.ref[PoolBase]] = []
_live_pools_lock = threading.Lock()
_sweep_at = 64  # sweep dead references when the list reaches this length


def live_pools() -> list[PoolBase]:
    """Every pool of this process that has not been garbage-collected (for metrics)."""
    with _live_pools_lock:
        return [pool for ref in _live_pools if (pool := ref()) is not None]


def _register(pool: PoolBase) -> None:
    global _sweep_at
    with _live_pools_lock:
        if len(_live_pools) >= _sweep_at:
            _live_pools[:] = [ref for ref in _live_pools if ref() is not None]
            _sweep_at = max(64, 2 * len(_live_pools))
        _live_pools.append(weakref.ref(pool))


class PoolBase:
    """The settings, the state, the lock, and the plumbing every other layer uses.

    Not a pool to use by itself: `PoolMaintenance` (maintenance.py) builds on it,
    `AbstractConnectionPool` (pool.py) is the psycopg2.pool API built on both, and
    `ThreadedConnectionPool` (threaded.py) the one to use. Its `__init__` is every pool's
    constructor, so it also sets the attributes the layers above read (their comments say
    where).
    """

    _default_timeout = 30.0
    # Whether a connection that becomes free with nobody waiting goes on the idle stack
    # (False: it is closed; NullConnectionPool, null.py). Read into PoolState.keeps_idle.
    _keeps_idle = True

    def __init__(
        self,
        minconn: int,
        maxconn: int,
        *args: Any,
        timeout: float | None = None,
        max_waiting: int = 0,
        max_idle: float = 600.0,
        max_lifetime: float = 3600.0,
        max_lease: float | None = None,
        health_check_after: float = 0.5,
        max_connecting: int = 2,
        maintenance_interval: float | None = 1.0,
        reconnect_timeout: float = 300.0,
        reconnect_failed: Callable[[Any], object] | None = None,
        reset: Callable[[Any], object] | None = None,
        configure: Callable[[Any], object] | None = None,
        name: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        connector: Callable[..., Any] = psycopg2.connect,
        open: bool = True,
        **kwargs: Any,
    ) -> None:
        """Make a pool; every pool class takes these arguments.

        `minconn`, `maxconn`, `*args` and `**kwargs` are psycopg2.pool's: the pool keeps at
        least `minconn` and at most `maxconn` connections, each opened with
        `psycopg2.connect(*args, **kwargs)`. The options below are keyword-only and none
        collides with a libpq or `psycopg2.connect` parameter, so everything else passed
        still goes to `psycopg2.connect` unchanged. A bad value raises at once, naming the
        option. The README's options table and the site's are rendered from this list.

        Args:
            timeout: seconds `getconn` waits; `getconn(timeout=...)` overrides per call
            max_waiting: callers allowed to queue (0: no limit); more get `TooManyWaiting`
                at once
            max_idle: idle connections above `minconn` are closed after this many seconds
            max_lifetime: connections are replaced after this long (minus up to 5 %
                jitter), never while checked out
            max_lease: a checkout longer than this is a leak: closed, slot freed, warning
                with the caller's stack (none: off)
            health_check_after: a connection idle longer than this is pinged (`SELECT 1`)
                before it is handed out; 0 pings every checkout (SQLAlchemy's
                `pool_pre_ping`)
            max_connecting: connects in flight at once, so a burst of callers cannot open
                `maxconn` connections (a Threaded pool's connector opens them one at a
                time, and only while callers wait)
            maintenance_interval: how often maintenance reaps (`max_idle`), expires,
                reclaims (`max_lease`) and refills to `minconn`: the background thread of a
                Threaded pool, or a Simple pool's own calls. `None` turns all of that off
                unless you call `pool.maintain()`
            reconnect_timeout: after this many seconds of connects failing in a row while
                the pool keeps retrying (the server is down), the pool logs a warning and
                calls `reconnect_failed`, then keeps trying with its back-off and counts
                again. A success ends the run, and so does a pause in the retries (nothing
                needed a connection): two short blips far apart are not one long outage
            reconnect_failed: called as `reconnect_failed(pool)`, outside the pool's lock,
                each `reconnect_timeout` of failing connects (judged at each failed attempt,
                so up to one back-off, 2 s, late): alert, or `pool.closeall()` to stop the
                retries. It may run on the pool's connector thread, where `sys.exit()` does
                not end the process: signal it instead,
                `os.kill(os.getpid(), signal.SIGTERM)` (psycopg_pool's callback of the same
                name)
            reset: called with each returned connection; `pgpool.discard_all` wipes the
                session
            configure: called with each new connection; the psycopg2 session attributes
                it sets become the defaults restored on return (SQL `SET`s it runs are
                committed, but a `reset` like `DISCARD ALL` wipes them: put those in the
                DSN's `options=-c ...`)
            name: shown in `repr`, logs and errors (none: `pgpool-N`); one that looks like
                a connection string (an `=`, or a `postgres://` URI) is refused, so a DSN
                passed here by mistake never shows its password
            clock: injectable, for tests
            connector: what opens a connection (called with your `*args, **kwargs`); one
                that returns no psycopg2 connection gets a `TypeError` at the first connect
            open: `False` creates the pool with no connection and no thread (a pre-fork
                master, an app factory) until `open()`
        """
        options = PoolOptions(
            minconn=minconn,
            maxconn=maxconn,
            timeout=self._default_timeout if timeout is None else timeout,
            max_waiting=max_waiting,
            max_idle=max_idle,
            max_lifetime=max_lifetime,
            max_lease=max_lease,
            health_check_after=health_check_after,
            max_connecting=max_connecting,
            maintenance_interval=maintenance_interval,
            reconnect_timeout=reconnect_timeout,
            reconnect_failed=reconnect_failed,
            reset=reset,
            configure=configure,
            name=f"pgpool-{next(_pool_numbers)}" if name is None else name,
            clock=clock,
            connector=connector,
        )
        self._options = check_options(options)  # TypeError or ValueError naming the option
        # Connection arguments: kept to open connections, never shown (they may hold a password).
        self._args = args
        self._kwargs = kwargs
        self._clock = clock
        # The one lock. It guards self._state and nothing else; it is never held during I/O.
        self._lock = threading.Lock()
        # open=False: created, not opened (no connection, no thread) until open() is called.
        # Until then the pool is closed to callers, with an error that says to open it.
        self._opened = open
        self._state = PoolState(self._options, closed=not open, keeps_idle=self._keeps_idle)
        # Connections taken back after max_lease (maintenance.py's maintain adds them):
        # returning one later is harmless, not misuse (pool.py's _put_stranger reads it).
        self._reclaimed: weakref.WeakSet[Any] = weakref.WeakSet()
        # When maintenance next runs (never, without an interval): read by the connector's
        # rounds and by a Simple pool's own calls (threaded.py; _maintain_inline, in
        # maintenance.py, moves it on).
        no_maintenance = self._options.maintenance_interval is None
        self._next_maintenance = math.inf if no_maintenance else 0.0
        # Copies of options read on every checkout, to keep getconn's fast path (pool.py)
        # short. A pool that tracks leases records where each one was taken: none skips
        # _vet_or_retry (pool.py) then.
        self._check_after = self._options.health_check_after
        if self._options.max_lease is not None:
            self._check_after = -math.inf
        # Whether getconn's fast path (pool.py) queues a caller that finds nothing idle:
        # only with a background connector (set by ThreadedConnectionPool) and a pool
        # timeout above 0.
        self._queue_at_once = False
        self._track_leases = self._options.max_lease is not None
        self._reset = self._options.reset
        if open:
            self._open_initial()
        _register(self)

    # -- the attributes psycopg2.pool has, and pgpool's name ------------------------------

    @property
    def minconn(self) -> int:
        """Connections the pool keeps open, idle or not (changed by `resize`)."""
        return self._options.minconn

    @property
    def maxconn(self) -> int:
        """Connections the pool never exceeds, counting those being opened."""
        return self._options.maxconn

    @property
    def closed(self) -> bool:
        """True once `closeall()` was called (as psycopg2.pool's attribute)."""
        return self._state.closed

    @property
    def name(self) -> str:
        """The pool's name in its `repr`, logs and errors (`pgpool-N` unless given)."""
        return self._options.name

    # -- snapshots ------------------------------------------------------------------------

    def stats(self) -> PoolStats:
        """A consistent, frozen snapshot of the pool's gauges and counters."""
        with self._lock:
            return self._state.snapshot()

    def pop_stats(self) -> PoolStats:
        """Like `stats()`, and set the counters back to zero in the same step: what a
        metrics exporter that reports per-interval deltas reads. Gauges are not affected."""
        with self._lock:
            return self._state.snapshot(reset=True)

    def __repr__(self) -> str:
        # No lock: a repr must never block (it may be called while logging), and these reads
        # are each atomic. Never the DSN: it may hold a password.
        s = self._state
        if s.closed:
            counts = "closed"
        else:
            counts = (
                f"idle {len(s.idle)}, in use {s.in_use}, connecting {s.connecting}, "
                f"waiting {len(s.waiters)}"
            )
        sizes = f"min {self.minconn}, max {self.maxconn}"
        return f"<{type(self).__name__} {self.name!r} [{counts} | {sizes}]>"

    # -- opening a connection, recording an outcome ---------------------------------------

    def _open_slot(self) -> Slot:
        """Connect, run `configure`, and record the session defaults to restore on return."""
        options = self._options
        started = time.perf_counter()
        conn = conn_ops.connect(options.connector, self._args, self._kwargs)
        logger.debug(
            "pool %r: opened a connection in %.1f ms",
            self.name,
            1e3 * (time.perf_counter() - started),
        )
        try:
            if options.configure is not None:
                options.configure(conn)
                status = conn.get_transaction_status()
                if status == TRANSACTION_STATUS_INERROR:
                    # A commit now would silently roll back every SET configure made.
                    raise PoolError(
                        f"pool {self.name!r}: the configure callback left the connection in a "
                        "failed transaction (a statement in it raised), so what it set would "
                        "be rolled back; catch the error in configure or roll back yourself"
                    )
                if status != TRANSACTION_STATUS_IDLE:
                    conn.commit()  # so what configure SET lasts, and the connection is idle
            defaults = conn_ops.session_defaults(conn)
            # Now, while nobody else can close the connection: see stopper.py.
            try:
                stopper = Stopper(conn)
            except OSError as error:
                # No descriptor left for its duplicate (EMFILE): to the caller, a connect
                # that failed, as the driver reports one, with the pool's back-off after it.
                raise psycopg2.OperationalError(
                    f"could not prepare the new connection: {error}"
                ) from error
        except BaseException:
            conn_ops.close_quietly(conn)
            raise
        now = self._clock()
        lifetime = options.max_lifetime * jitter(LIFETIME_JITTER)
        return Slot(
            conn, now, now + lifetime, defaults, conn.encoding, last_used=now, stopper=stopper
        )

    def _open_initial(self) -> None:
        """Open `minconn` connections before the pool is shared: fail fast if we cannot."""
        slots: list[Slot] = []
        try:
            for _ in range(self.minconn):
                slots.append(self._open_slot())
        except BaseException:
            for slot in slots:
                conn_ops.discard(slot)
            raise
        self._state.opened_initial(slots)

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
            log = logger.warning if failures <= 1 else logger.debug
            log("pool %r: could not open a connection: %s", self.name, error)
            logger.debug(
                "pool %r: %d connect(s) failed in a row; backing off until t=%.3f",
                self.name, failures, state.next_connect_at,
            )  # fmt: skip
            return False
        failures = state.connect_failures  # read without the lock: only for the log line
        if failures:
            logger.info("pool %r: connected again after %d failed connect(s)", self.name, failures)
        if not self._record(state.connected_idle, slot, NOW, reservation):
            # The pool was closed or shrunk meanwhile, or keeps nothing idle and the
            # waiter this was for has gone.
            conn_ops.discard(slot)
            return False
        return True

    def _connect_failed(self, error: BaseException, reservation: Reservation | None = None) -> None:
        """Record a failed connect (the back-off starts or grows). Once connects have been
        failing for `reconnect_timeout`, say so, and call `reconnect_failed(pool)`: here,
        outside the lock, in whichever thread connected (the connector, or a caller)."""
        if not self._record(self._state.connect_failed, error, NOW, jitter(0.5), reservation):
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

    def _record(self, transition: Callable[..., T], *args: Any) -> T:
        """Run `transition(*args)` under the lock to record the outcome of I/O just done;
        an argument `NOW` is replaced with the clock, read under the lock.

        It must not be lost: a connect that succeeded or failed, a connection cleaned,
        would otherwise leave its slot reserved forever. So an exception that arrives while
        this thread waits for the lock (a KeyboardInterrupt from a signal handler) is held
        back until the transition has run, then raised. One the transition itself raises
        is raised at once (it is a bug; running it again could count twice).
        """
        interrupted: BaseException | None = None
        done = False
        while not done:
            ran = False
            try:
                with self._lock:
                    ran = True
                    result = transition(*[self._clock() if a is NOW else a for a in args])
                    done = True
            except BaseException as exc:
                if ran and not done:
                    raise
                interrupted = interrupted or exc
        if interrupted is not None:
            raise interrupted
        return result

    # -- errors ---------------------------------------------------------------------------

    def _closed_error(self) -> PoolClosed:
        if not self._opened:
            return PoolClosed(f"pool {self.name!r} is not open yet: call pool.open() first")
        return PoolClosed(f"connection pool is closed ({self.name!r})")

    def _timeout_error(self, waited: float, timeout: float) -> PoolTimeout:
        """The PoolTimeout for a caller that waited `waited` s (built under the lock, so it
        logs nothing: getconn logs it once the lock is released)."""
        s = self._state
        what = "connection pool exhausted" if timeout <= 0 else "timed out waiting for a connection"
        message = (
            f"{what}: pool {self.name!r} waited {waited:.3f} s (timeout {timeout:g} s); "
            f"{s.in_use} in use, {s.connecting} connecting, maxconn {self.maxconn}"
        )
        error = s.last_connect_error
        if error is not None and s.connect_failures:
            # Say why nothing came: the connects are failing. The driver's error (already
            # scrubbed of passwords) is also the timeout's __cause__, so a traceback shows it.
            message += f"; the last connect failed: {type(error).__name__}: {error}"
            timeout_error = PoolTimeout(message)
            timeout_error.__cause__ = error
            return timeout_error
        return PoolTimeout(message)

    # -- fork -----------------------------------------------------------------------------

    def _after_fork_in_child(self) -> None:
        """In a forked child: forget the parent's connections without touching its sockets."""
        self._lock = threading.Lock()
        old = self._state
        devnull = os.open(os.devnull, os.O_RDWR)
        try:
            for slot in [*old.idle, *old.leased.values(), *old.returning.values()]:
                conn_ops.disown(slot.conn, devnull)
                if slot.stopper is not None:
                    # The child's copies: its duplicate of the parent's socket is closed
                    # (never shut down, which would cut the parent's connection), and the
                    # cancel request, plain memory copied by fork(), freed. Never sent.
                    slot.stopper.release()
        finally:
            os.close(devnull)
        self._state = PoolState(self._options, closed=old.closed, keeps_idle=self._keeps_idle)
        self._reclaimed = weakref.WeakSet()
        if self._options.maintenance_interval is not None:
            self._next_maintenance = 0.0


def _reinit_pools_after_fork() -> None:
    global _live_pools_lock
    # A parent thread may have held the lock at fork: the child's copy would stay locked.
    _live_pools_lock = threading.Lock()
    watchdog.reinit_after_fork()
    for pool in live_pools():
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_reinit_pools_after_fork)

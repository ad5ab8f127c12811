"""Stateful property test: Hypothesis drives a pool while a model predicts every outcome.

`PoolMachine` is a Hypothesis `RuleBasedStateMachine`. Its rules are what a program (or a
misbehaving one, or the server) does to a pool: check out (with and without a key), return
(cleanly, dirty, closed, with the wrong key, twice, a stranger), kill connections on the
server side, refuse connects (or fail them in `configure`), move the clock, run maintenance,
close and reopen. Before each
call the machine predicts, from its own model of the pool, what must happen: which
connection is handed out, which are dropped and why, which error is raised, how every
`stats()` counter moves. After each step it checks invariants against the pool, the model
and the connections themselves (see `PoolMachine.pool_matches_model`).

Everything is single-threaded: `timeout=0` (so getconn never waits), no maintenance thread
(`maintenance_interval=None`; a Simple pool may run maintenance inline), and a `FakeClock`
that moves only when a rule says so. Connection ages are therefore exact, and the model can
mirror the pool's comparisons bit for bit; the rules that jump the clock to a deadline
(`advance_to`) exist to land on those comparisons' boundaries.

The pool draws two random numbers: each connection's lifetime jitter, and the connect
back-off. The model reads them from the pool's internals (`_slot_of`, `_backoff_of`),
checks that they are within their documented bounds, and predicts from there.

This module runs the machine on `FakeConnection`s (tests/fakes.py): pure pool logic, fast,
many examples. tests/test_state_machine_real.py runs the same machine on a real server.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
from fakes import FakeClock, FakeServer
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
)

import pgpool
from pgpool.state import BACKOFF_BASE, BACKOFF_CAP, BACKOFF_MAX_DOUBLINGS, LIFETIME_JITTER

KEYS = ("a", "b", "c")
IDLE = ext.TRANSACTION_STATUS_IDLE
INTRANS = ext.TRANSACTION_STATUS_INTRANS
INERROR = ext.TRANSACTION_STATUS_INERROR
UNKNOWN = ext.TRANSACTION_STATUS_UNKNOWN
PSYCOPG2_DEFAULTS = (False, None, None, None)  # autocommit, isolation_level, readonly, deferrable
COUNTERS = (
    "checkouts",
    "waits",
    "timeouts",
    "wait_time",
    "connections_opened",
    "connect_errors",
    "connections_closed",
    "idle_reaped",
    "expired",
    "leases_reclaimed",
    "broken_returns",
    "failed_checks",
)


def note_event(name: str) -> None:
    """`hypothesis.event`, also callable when a reproduction is replayed by hand."""
    if currently_in_test_context():
        event(name)


def scaled(examples: int) -> int:
    """`examples` under the "default" profile (100 examples), proportionally fewer under
    "ci" (30) or any other profile loaded by conftest."""
    return max(1, examples * settings().max_examples // 100)


# -- the pool's optional callbacks, as named functions (they appear in reproductions) -----


class ConfigureFailed(Exception):
    """Raised by `configure` when the machine makes connects fail there."""


def configure_autocommit(conn: Any) -> None:
    conn.autocommit = True


def configure_readonly(conn: Any) -> None:
    conn.readonly = True


def configure_readonly_autocommit(conn: Any) -> None:
    """A read-only autocommit session: psycopg2 makes it with SET default_transaction_read_only
    on the server (in this order; the other order would leave the server read-write)."""
    conn.autocommit = True
    conn.readonly = True


def leave_transaction_open(conn: Any) -> None:
    """A careless `reset`: it leaves a transaction open, which the pool must roll back."""
    conn.autocommit = False
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")


CONFIGURES: dict[str, Callable[[Any], None]] = {
    "autocommit": configure_autocommit,
    "readonly": configure_readonly,
    "readonly_autocommit": configure_readonly_autocommit,
}
RESETS: dict[str, Callable[[Any], None]] = {
    "discard_all": pgpool.discard_all,
    "reset_session": pgpool.reset_session,
    "leave_transaction_open": leave_transaction_open,
}


@dataclass(frozen=True)
class PoolConfig:
    """The options a machine's pools are built with (drawn once per run)."""

    minconn: int
    maxconn: int
    max_connecting: int
    health_check_after: float
    max_idle: float
    max_lifetime: float
    max_lease: float | None
    configure: str | None  # a key of CONFIGURES
    reset: str | None  # a key of RESETS
    maintenance_interval: float | None  # Simple pools only: maintenance in getconn/putconn

    def pool_options(self) -> dict[str, Any]:
        return {
            "max_connecting": self.max_connecting,
            "health_check_after": self.health_check_after,
            "max_idle": self.max_idle,
            "max_lifetime": self.max_lifetime,
            "max_lease": self.max_lease,
            "configure": None if self.configure is None else CONFIGURES[self.configure],
            "reset": None if self.reset is None else RESETS[self.reset],
            "maintenance_interval": self.maintenance_interval,
        }

    @property
    def defaults(self) -> tuple[Any, ...]:
        """The session attributes every connection must have when handed out or idle."""
        autocommit, isolation_level, readonly, deferrable = PSYCOPG2_DEFAULTS
        if self.configure in ("autocommit", "readonly_autocommit"):
            autocommit = True
        if self.configure in ("readonly", "readonly_autocommit"):
            readonly = True
        return (autocommit, isolation_level, readonly, deferrable)


@st.composite
def pool_configs(
    draw: st.DrawFn, inline_maintenance: bool = False, keeps_idle: bool = True
) -> PoolConfig:
    maxconn = draw(st.integers(1, 3))
    return PoolConfig(
        minconn=draw(st.integers(0, maxconn)) if keeps_idle else 0,
        maxconn=maxconn,
        max_connecting=draw(st.integers(1, 2)),
        health_check_after=draw(st.sampled_from([0.0, 0.5, 2.0])),
        max_idle=draw(st.sampled_from([1.0, 10.0, 600.0])),
        max_lifetime=draw(st.sampled_from([5.0, 30.0, 3600.0])),
        max_lease=draw(st.sampled_from([None, 2.0, 30.0])),
        configure=draw(st.sampled_from([None, *CONFIGURES])),
        reset=draw(st.sampled_from([None, *RESETS])),
        maintenance_interval=draw(st.sampled_from([None, 5.0])) if inline_maintenance else None,
    )


# -- the model ----------------------------------------------------------------------------


@dataclass(eq=False)
class Tracked:
    """What the model knows about one connection the pool opened."""

    number: int
    opened_at: float
    last_used: float
    conn: Any = None  # None until the call that opens it has returned
    expires_at: float = math.inf  # read from the pool (jitter) once the connection exists
    # "idle", "leased", "gone" (the pool dropped and closed it); while the call that opens
    # it runs, "configure failed" for one the pool must close at once.
    where: str = "idle"
    key: Hashable | None = None
    leased_at: float = 0.0
    killed: bool = False  # terminated by the server; the client may not know yet
    hidden_tx: bool = False  # in a transaction psycopg2 does not know about (BEGIN in autocommit)
    client_closed: bool = False  # closed by its borrower, or found dead by its borrower
    reclaimed: bool = False  # taken back after max_lease

    def __repr__(self) -> str:
        return f"<conn #{self.number} {self.where}{' killed' if self.killed else ''}>"


@dataclass(eq=False)
class Loan:
    """One successful getconn, as its borrower sees it."""

    track: Tracked
    key: Hashable | None
    generation: int  # the pool it came from: each reopen starts a new generation

    @property
    def conn(self) -> Any:
        return self.track.conn

    def __repr__(self) -> str:
        return f"Loan(#{self.track.number}, key={self.key!r}, pool={self.generation})"


@dataclass(eq=False)
class Model:
    """The expected state of one pool."""

    config: PoolConfig
    idle: list[Tracked] = field(default_factory=list)  # bottom (coldest) first
    leased: dict[int, Tracked] = field(default_factory=dict)  # id(conn) -> connection
    keys: dict[Hashable, Tracked] = field(default_factory=dict)
    tracked: dict[int, Tracked] = field(default_factory=dict)  # id(conn) -> every connection
    pending: list[Tracked] = field(default_factory=list)  # opened by the current call
    counters: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTERS, 0))
    connect_failures: int = 0  # in a row: drives the back-off
    configure_failures: int = 0  # connections opened and closed at once (configure failed)
    next_connect_at: float = 0.0
    backoff_pending: bool = False  # a connect failed in the current call
    next_maintenance: float = 0.0
    closed: bool = False

    @property
    def size(self) -> int:
        return len(self.idle) + len(self.leased)

    def all(self) -> list[Tracked]:
        return list(self.tracked.values())


def session_attributes(conn: Any) -> tuple[Any, ...]:
    return (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)


def _slot_of(pool: pgpool.AbstractConnectionPool, conn: Any) -> Any:
    """The pool's record of `conn` (internals: only to read the lifetime jitter)."""
    state = pool._state
    for slot in [*state.idle, *state.leased.values(), *state.returning.values()]:
        if slot.conn is conn:
            return slot
    raise AssertionError(f"the pool has no slot for {conn!r}")


def _backoff_of(pool: pgpool.AbstractConnectionPool) -> float:
    """When the pool will next try to connect (internals: the back-off jitter)."""
    return float(pool._state.next_connect_at)


class FakeWorld:
    """The machine's outside world on fakes: a FakeServer and a FakeClock.

    A world also acts on connections the way a borrower or the server would, so that the
    same machine runs against a real server (see test_state_machine_real.py).
    """

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.server = FakeServer()
        self._strangers = FakeServer()  # connections no pool knows

    @property
    def connections(self) -> list[Any]:
        """Every connection opened through `connect`, in order."""
        return self.server.connections

    def pool_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return ("dbname=fake",), {"application_name": "pgpool-state-machine"}

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        return self.server.connect(*args, **kwargs)

    def set_refusing(self, refusing: bool) -> None:
        self.server.refusing = refusing

    def kill(self, conn: Any) -> None:
        conn.kill()

    def begin(self, conn: Any) -> None:
        conn.begin()

    def fail(self, conn: Any) -> None:
        conn.fail()

    def stranger(self) -> Any:
        return self._strangers.connect()

    def check_session(self, conn: Any) -> None:
        """Check that the server's session is what the attributes say (real server only)."""

    def close(self) -> None:
        pass


class PoolMachine(RuleBasedStateMachine):
    """A pool under random use, checked against a model after every step."""

    pool_class: ClassVar[type[pgpool.AbstractConnectionPool]] = pgpool.ThreadedConnectionPool

    loans = Bundle("loans")  # connections checked out and not yet returned
    returned = Bundle("returned")  # loans given back (to return them a second time)

    def __init__(self) -> None:
        super().__init__()
        self.world = self.make_world()
        self.clock = self.world.clock
        self.config: PoolConfig | None = None
        self.pool: pgpool.AbstractConnectionPool | None = None
        self.model: Model | None = None
        self.generation = 0
        self.outstanding: list[Loan] = []  # loans not given back, from any generation
        self.numbers = 0  # connections opened, over all generations (names them in messages)
        self.accounted = 0  # world.connections[:accounted] are all explained by the model
        self.connects = "succeed"  # or "are refused", or "fail in configure"

    def make_world(self) -> Any:
        return FakeWorld()

    def teardown(self) -> None:
        try:
            if self.pool is not None and not self.pool.closed:
                self.pool.closeall()
        finally:
            self.world.close()

    # -- opening --------------------------------------------------------------------------

    @initialize(config=pool_configs())
    def open_pool(self, config: PoolConfig) -> None:
        self.config = config
        self._open_pool()

    @precondition(lambda self: self.model is not None and self.model.closed)
    @rule()
    def reopen(self) -> None:
        """A closed pool is replaced by a new one with the same options."""
        self._open_pool()

    def _open_pool(self) -> None:
        config = self.config
        assert config is not None
        now = self.clock()
        model = Model(config)
        args, kwargs = self.world.pool_args()
        options = config.pool_options()
        options["configure"] = functools.partial(self._configure, options["configure"])
        expect_failure = self.connects != "succeed" and config.minconn > 0
        if not expect_failure:
            for _ in range(config.minconn):
                self._new_tracked(model, now, where="idle")
            model.counters["connections_opened"] += config.minconn
        try:
            pool = self.pool_class(
                config.minconn,
                config.maxconn,
                *args,
                timeout=0,  # never wait: the fake clock would not move while we slept
                clock=self.clock,
                connector=self.world.connect,
                **options,
                **kwargs,
            )
        except (psycopg2.OperationalError, ConfigureFailed) as error:
            assert expect_failure, f"the pool could not open minconn connections: {error!r}"
            assert isinstance(error, self._connect_error()), "not the connect's own error"
            opened = self.world.connections[self.accounted :]
            assert all(conn.closed for conn in opened), "a failed pool left connections open"
            self.accounted = len(self.world.connections)
            return  # the closed pool stays: every call on it still raises PoolClosed
        assert not expect_failure, "the pool was created though connects fail"
        self.pool, self.model = pool, model
        self.generation += 1
        self._adopt_pending()

    def _configure(self, configure: Callable[[Any], None] | None, conn: Any) -> None:
        """The pool's `configure`: the drawn one, unless connects fail in configure."""
        if self.connects == "fail in configure":
            raise ConfigureFailed("configure failed (simulated by the test)")
        if configure is not None:
            configure(conn)

    def _connect_error(self) -> type[Exception]:
        """What a failed connect raises: the driver's or configure's own error."""
        if self.connects == "fail in configure":
            return ConfigureFailed
        return psycopg2.OperationalError

    def _new_tracked(self, model: Model, now: float, *, where: str) -> Tracked:
        """A connection the pool is expected to open in the current call."""
        self.numbers += 1
        track = Tracked(self.numbers, opened_at=now, last_used=now, where=where)
        model.pending.append(track)
        if where == "idle":
            model.idle.append(track)
        return track

    def _adopt_pending(self) -> None:
        """After a call: bind the connections it opened to the model's placeholders."""
        model, pool = self.model, self.pool
        assert model is not None and pool is not None
        new = self.world.connections[self.accounted :]
        assert len(new) == len(model.pending), (
            f"the pool opened {len(new)} connections, the model expected {len(model.pending)}"
        )
        lifetime = model.config.max_lifetime
        for track, conn in zip(model.pending, new, strict=True):
            track.conn = conn
            model.tracked[id(conn)] = track
            if track.where == "configure failed":
                track.where = "gone"  # opened, then closed at once: never counted as opened
                model.configure_failures += 1
            elif track.where != "gone":
                track.expires_at = _slot_of(pool, conn).expires_at
                low = track.opened_at + lifetime * LIFETIME_JITTER
                high = track.opened_at + lifetime
                slack = 1e-9 * lifetime
                assert low - slack <= track.expires_at <= high + slack, "lifetime jitter"
            if track.where == "leased":
                model.leased[id(conn)] = track
        self.accounted = len(self.world.connections)
        model.pending.clear()
        if model.backoff_pending:
            model.backoff_pending = False
            model.next_connect_at = _backoff_of(pool)
            now = self.clock()
            doublings = min(model.connect_failures - 1, BACKOFF_MAX_DOUBLINGS)
            delay = min(BACKOFF_CAP, BACKOFF_BASE * 2**doublings)
            assert now + delay * 0.5 <= model.next_connect_at <= now + delay, "back-off"

    # -- model transitions ----------------------------------------------------------------

    def _lease(self, track: Tracked, key: Hashable | None, now: float) -> None:
        model = self.model
        assert model is not None
        track.where = "leased"
        track.key = key
        track.leased_at = now
        track.hidden_tx = False
        if track.conn is not None:
            model.leased[id(track.conn)] = track
        if key is not None:
            model.keys[key] = track

    def _unlease(self, track: Tracked) -> None:
        model = self.model
        assert model is not None
        del model.leased[id(track.conn)]
        if track.key is not None:
            del model.keys[track.key]
            track.key = None

    def _drop(self, track: Tracked) -> None:
        """The pool discards a connection (it must close it)."""
        assert self.model is not None
        track.where = "gone"
        self.model.counters["connections_closed"] += 1

    def _connect(self, *, where: str, key: Hashable | None = None) -> Tracked | None:
        """The pool opens one connection now: None if that fails."""
        model = self.model
        assert model is not None
        now = self.clock()
        if self.connects != "succeed":
            if self.connects == "fail in configure":  # opened, then closed by the pool
                self._new_tracked(model, now, where="configure failed")
            model.counters["connect_errors"] += 1
            model.connect_failures += 1
            model.next_connect_at = math.inf  # read back after the call
            model.backoff_pending = True
            return None
        track = self._new_tracked(model, now, where=where)
        model.counters["connections_opened"] += 1
        model.connect_failures = 0
        model.next_connect_at = 0.0
        if where == "leased":
            self._lease(track, key, now)
        return track

    def _expect_maintenance(self) -> list[Tracked]:
        """One maintenance pass: returns the connections it must close (incl. reclaimed)."""
        model = self.model
        assert model is not None
        config, now = model.config, self.clock()
        # First, without a round trip, the idle connections whose socket turned readable
        # (here: killed ones) are pinged; the dead are dropped.
        probed = [track for track in model.idle if track.killed]
        for track in probed:
            model.idle.remove(track)
            model.counters["failed_checks"] += 1
            self._drop(track)
        closing: list[Tracked] = []
        keep: list[Tracked] = []
        for track in model.idle:  # expired connections go, whatever minconn says
            if now >= track.expires_at:
                closing.append(track)
                model.counters["expired"] += 1
            else:
                keep.append(track)
        # Reap the coldest (the bottom of the stack) idle past max_idle, down to minconn.
        excess = len(keep) + len(model.leased) - config.minconn
        reaped = 0
        while reaped < excess and reaped < len(keep):
            if now - keep[reaped].last_used < config.max_idle:
                break
            reaped += 1
        closing += keep[:reaped]
        model.counters["idle_reaped"] += reaped
        model.idle = keep[reaped:]
        for track in closing:
            self._drop(track)
        if config.max_lease is not None:
            for track in list(model.leased.values()):
                if now - track.leased_at >= config.max_lease:
                    self._unlease(track)
                    self._drop(track)
                    track.reclaimed = True
                    model.counters["leases_reclaimed"] += 1
                    closing.append(track)
        closing += probed
        # Refill to minconn, at most max_connecting at once, not during a back-off.
        refill = 0
        while (
            model.size + refill < config.minconn
            and refill < config.max_connecting
            and now >= model.next_connect_at
        ):
            refill += 1
        for _ in range(refill):
            if self._connect(where="idle") is None:
                break  # the first failure ends the refill
        return closing

    def _expect_return(self, track: Tracked, close: bool) -> str:
        """What putconn does with a connection leased from it: "keep", "close", "expired",
        "broken", or "either" (keep it clean or discard it as broken: both are right)."""
        model = self.model
        assert model is not None
        conn, config = track.conn, model.config
        expired = self.clock() >= track.expires_at
        if close:
            return "close"
        closed = conn.closed != 0
        status = conn.get_transaction_status()
        clean = not closed and status == IDLE and session_attributes(conn) == config.defaults
        if clean and config.reset is None and not expired:
            return "keep"  # the fast path: no round trip, so a kill goes unnoticed
        if expired:
            return "expired"
        if closed or status == UNKNOWN:
            return "broken"
        if track.hidden_tx:
            # psycopg2's rollback() does nothing: the pool must notice, and roll back
            # with SQL or discard the connection. Keeping it in the transaction is a bug.
            return "either"
        if status != IDLE and track.killed:
            return "broken"  # the rollback is a round trip, and fails
        if config.reset is not None and track.killed:
            return "broken"  # every reset here runs a statement
        if track.killed and session_attributes(conn) != config.defaults:
            # Restoring them is a round trip in some cases (autocommit: see fakes.py),
            # which fails; psycopg2's business, not the pool's: both outcomes are right.
            return "either"
        return "keep"

    # -- getconn --------------------------------------------------------------------------

    def _getconn(self, key: Hashable | None, explicit_timeout: bool = True) -> Any:
        assert self.pool is not None
        if explicit_timeout:
            return self.pool.getconn(key, timeout=0)
        return self.pool.getconn(key)  # the pool's own timeout (0): getconn's fast path

    def _inline_maintenance(self) -> list[Tracked]:
        """A Simple pool runs maintenance from getconn (before) and putconn (after), at most
        once per maintenance_interval. Returns the connections it must close."""
        model = self.model
        assert model is not None
        interval, now = model.config.maintenance_interval, self.clock()
        if interval is None or now < model.next_maintenance:
            return []
        model.next_maintenance = now + interval
        return [] if model.closed else self._expect_maintenance()

    @rule(target=loans, key=st.none() | st.sampled_from(KEYS), explicit_timeout=st.booleans())
    def getconn(self, key: Hashable | None, explicit_timeout: bool) -> Any:
        """`getconn(key)`, or `getconn(key, timeout=0)`: never waits."""
        model, pool = self.model, self.pool
        if model is None or model.closed:
            self._expect_closed(lambda: self._getconn(key, explicit_timeout))
            return multiple()
        assert pool is not None
        config, now = model.config, self.clock()
        closing = self._inline_maintenance()
        sticky = model.keys.get(key) if key is not None else None
        chosen: Tracked | None = None
        outcome = "sticky"
        if sticky is None:
            while model.idle and chosen is None:
                track = model.idle.pop()
                if now >= track.expires_at:
                    model.counters["expired"] += 1
                elif now - track.last_used <= config.health_check_after or not track.killed:
                    chosen = track  # used moments ago (no ping), or the ping succeeds
                    self._lease(track, key, now)
                    outcome = "idle"
                    continue
                else:
                    model.counters["failed_checks"] += 1
                self._drop(track)
                closing.append(track)
            if chosen is None:
                # getconn here never waits (timeout 0): such a caller connects whenever the
                # pool has room, whatever the back-off (which paces callers that can wait).
                if model.size < config.maxconn:
                    chosen = self._connect(where="leased", key=key)
                    outcome = "connect fails" if chosen is None else "opened"
                else:
                    outcome = "timeout"
                    model.counters["timeouts"] += 1
        else:
            chosen = sticky
        note_event(f"getconn: {outcome}" + (", after dropping some" if closing else ""))
        if outcome in ("sticky", "idle", "opened"):
            model.counters["checkouts"] += 1  # stats(): "successful getconn calls"

        try:
            conn = self._getconn(key, explicit_timeout)
        except pgpool.PoolTimeout:
            assert outcome == "timeout", f"PoolTimeout, the model expected {outcome}"
            conn = None
        except (psycopg2.OperationalError, ConfigureFailed) as error:
            assert outcome == "connect fails", f"{error!r}, the model expected {outcome}"
            assert isinstance(error, self._connect_error()), "not the connect's own error"
            conn = None
        else:
            assert outcome not in ("timeout", "connect fails"), f"got a conn, expected {outcome}"
        self._adopt_pending()
        for track in closing:
            assert track.conn.closed, f"the pool dropped {track} without closing it"
        if conn is None:
            return multiple()
        assert chosen is not None
        assert conn is chosen.conn, f"handed out {conn!r}, the model expected {chosen}"
        if outcome == "sticky":
            return multiple()  # same key, same connection, same borrower
        assert not conn.closed, "handed out a closed connection"
        assert conn.get_transaction_status() == IDLE, "handed out a connection in a transaction"
        assert session_attributes(conn) == config.defaults, "handed out a dirty session"
        held = [loan for loan in self.outstanding if loan.conn is conn]
        assert not held, f"handed out a connection still held by {held}"
        if not chosen.killed:
            self.world.check_session(conn)
        loan = Loan(chosen, key, self.generation)
        self.outstanding.append(loan)
        return loan

    # -- putconn --------------------------------------------------------------------------

    def _expect_putconn(self, conn: Any, key: Hashable | None, close: bool) -> str:
        model = self.model
        if model is None:
            return "closed"
        track = model.tracked.get(id(conn))
        if track is not None and track.conn is not conn:
            track = None
        if track is not None and track.reclaimed:
            return "reclaimed"  # returning it late is harmless, not misuse, even once closed
        if model.closed:
            # closeall(in_use=False) left it to its borrower: closed now, whatever the key
            return "close" if track is not None and track.where == "leased" else "closed"
        if track is None or track.where != "leased":
            return "misuse"  # a stranger, or returned twice
        if key is not None and track.key != key:
            return "misuse"
        return self._expect_return(track, close)

    def _putconn(self, conn: Any, key: Hashable | None, close: bool, expected: str) -> None:
        model, pool = self.model, self.pool
        assert pool is not None
        note_event(f"putconn: {expected}")
        if expected == "closed":
            self._expect_closed(lambda: pool.putconn(conn, key=key, close=close))
            return
        assert model is not None
        before = pool.stats()
        if expected == "misuse":
            state = (conn.closed, conn.get_transaction_status()) if hasattr(conn, "closed") else ()
            try:
                pool.putconn(conn, key=key, close=close)
            except pgpool.PoolError as error:
                assert not isinstance(error, pgpool.PoolClosed | pgpool.PoolTimeout), error
            else:
                raise AssertionError("misuse of putconn raised nothing")
            assert pool.stats() == before, "a refused putconn changed the pool"
            if state:
                assert (conn.closed, conn.get_transaction_status()) == state, "it touched conn"
            return
        if expected == "reclaimed":
            pool.putconn(conn, key=key, close=close)  # harmless: nothing to do
            self._after_putconn()
            return
        track = model.tracked[id(conn)]
        self._unlease(track)
        pool.putconn(conn, key=key, close=close)
        if expected == "either":
            # Both are right; the pool's own counter says which it did (closed alone cannot:
            # a Simple pool's inline maintenance may close a kept, killed connection).
            broken = pool.stats().broken_returns > before.broken_returns
            expected = "broken" if broken else "keep"
        if expected == "keep" and model.size >= model.config.maxconn:
            # Over a maxconn that resize() lowered (the only way to be over it): the pool
            # closes the connection instead of keeping it, until it fits.
            expected = "retired"
        if expected == "keep":
            track.where = "idle"
            track.last_used = self.clock()
            model.idle.append(track)
            # A Simple pool's putconn runs maintenance after the return, in the same call:
            # that may already have probed this connection and dropped it, if it was killed.
            interval = model.config.maintenance_interval
            maintained = interval is not None and self.clock() >= model.next_maintenance
            assert not conn.closed or (maintained and track.killed), "closed a kept connection"
        else:
            if expected in ("expired", "broken"):
                model.counters["expired" if expected == "expired" else "broken_returns"] += 1
            self._drop(track)
            assert conn.closed, f"a connection returned {expected} was not closed"
        self._after_putconn()

    def _after_putconn(self) -> None:
        """The maintenance a Simple pool runs after a successful putconn (the model's view
        is computed after the call: it needs the outcome of the return)."""
        closing = self._inline_maintenance()
        self._adopt_pending()
        for track in closing:
            assert track.conn.closed, f"maintenance dropped {track} without closing it"

    @rule(target=returned, loan=consumes(loans), how=st.sampled_from(["plain", "key", "close"]))
    def putconn(self, loan: Loan, how: str) -> Loan:
        """Give a loan back: `putconn(conn)`, `putconn(conn, key)` or `close=True`."""
        key = loan.key if how == "key" else None
        close = how == "close"
        self._putconn(loan.conn, key, close, self._expect_putconn(loan.conn, key, close))
        self.outstanding.remove(loan)
        return loan

    @rule(loan=loans, key=st.sampled_from(KEYS))
    def putconn_with_wrong_key(self, loan: Loan, key: str) -> None:
        expected = self._expect_putconn(loan.conn, key, False)
        if expected in ("misuse", "closed"):  # the key may happen to be the right one
            self._putconn(loan.conn, key, False, expected)

    @rule(loan=returned, close=st.booleans())
    def putconn_twice(self, loan: Loan, close: bool) -> None:
        expected = self._expect_putconn(loan.conn, None, close)
        if expected in ("misuse", "closed"):  # not if it was handed out again since
            self._putconn(loan.conn, None, close, expected)

    @rule(kind=st.sampled_from(["connection", "None", "object"]))
    def putconn_stranger(self, kind: str) -> None:
        stranger = {"connection": self.world.stranger, "None": lambda: None, "object": object}
        conn = stranger[kind]()
        self._putconn(conn, None, False, self._expect_putconn(conn, None, False))

    # -- what a borrower does to its connection -------------------------------------------

    @rule(
        loan=loans,
        action=st.sampled_from(
            [
                "begin",
                "fail",
                "close",
                ("autocommit", True),
                ("autocommit", False),
                ("readonly", True),
                ("readonly", False),
                ("deferrable", True),
                ("isolation_level", ext.ISOLATION_LEVEL_SERIALIZABLE),
            ]
        ),
    )
    def use(self, loan: Loan, action: str | tuple[str, Any]) -> None:
        """What a borrower may do before returning: start a transaction (with autocommit on,
        an explicit BEGIN that psycopg2 does not know about), abort it with a failing
        statement, close the connection, or change a session attribute."""
        if loan.conn.closed:
            return  # closed by its borrower, or by the pool (reclaimed, closeall)
        if action == "close":
            loan.conn.close()
            loan.track.client_closed = True
        elif action == "begin":
            self._begin(loan)
        elif action == "fail":
            self._fail(loan)
        else:
            assert isinstance(action, tuple)
            self._set_session_attribute(loan, *action)

    def _lost(self, loan: Loan) -> None:
        """A round trip on `loan` failed: the connection was killed, and now it knows."""
        assert loan.track.killed, "a round trip failed on a connection nobody killed"
        assert loan.conn.closed, "a lost connection is closed (psycopg2: closed == 2)"
        loan.track.client_closed = True

    def _begin(self, loan: Loan) -> None:
        conn = loan.conn
        if conn.get_transaction_status() != IDLE:
            return
        autocommit = conn.autocommit
        try:
            self.world.begin(conn)
        except psycopg2.OperationalError:
            self._lost(loan)
            return
        assert not loan.track.killed, "a killed connection ran a statement"
        assert conn.get_transaction_status() == INTRANS
        loan.track.hidden_tx = autocommit

    def _fail(self, loan: Loan) -> None:
        conn = loan.conn
        if conn.get_transaction_status() == INERROR:
            return
        was_idle = conn.get_transaction_status() == IDLE
        autocommit = conn.autocommit
        try:
            self.world.fail(conn)
        except psycopg2.OperationalError:
            self._lost(loan)
            return
        assert not loan.track.killed, "a killed connection ran a statement"
        assert conn.get_transaction_status() == INERROR
        if was_idle:
            loan.track.hidden_tx = autocommit
        elif not autocommit:
            loan.track.hidden_tx = False  # psycopg2 sent its own BEGIN: now it knows

    def _set_session_attribute(self, loan: Loan, name: str, value: Any) -> None:
        conn = loan.conn
        known_tx = conn.get_transaction_status() != IDLE and not loan.track.hidden_tx
        try:
            setattr(conn, name, value)
        except psycopg2.ProgrammingError:
            assert known_tx, "psycopg2 refused a session change outside a transaction"
        except psycopg2.OperationalError:  # in autocommit mode, a round trip
            self._lost(loan)
        except psycopg2.errors.InFailedSqlTransaction:  # ... in an aborted transaction
            assert conn.get_transaction_status() == INERROR
        else:
            assert not known_tx, "psycopg2 allowed a session change inside its transaction"

    # -- what the server does -------------------------------------------------------------

    def _kill(self, track: Tracked) -> None:
        if not track.killed and not track.conn.closed:
            self.world.kill(track.conn)
            track.killed = True

    @rule(loan=loans)
    def kill_checked_out(self, loan: Loan) -> None:
        self._kill(loan.track)

    @precondition(lambda self: self.model is not None and self.model.idle)
    @rule(which=st.sampled_from(["hottest", "coldest", "all"]))
    def kill_idle(self, which: str) -> None:
        """Kill the idle connection next in line, or the coldest, or (a server restart)
        every connection, idle and checked out: clients find out one by one."""
        model = self.model
        assert model is not None
        if which == "all":
            for track in [*model.idle, *model.leased.values()]:
                self._kill(track)
        else:
            self._kill(model.idle[-1 if which == "hottest" else 0])

    @rule(connects=st.sampled_from(["succeed", "are refused", "fail in configure"]))
    def connects_now(self, connects: str) -> None:
        """From now on, connects succeed, or the server refuses them, or the pool's
        `configure` callback fails on the new connection."""
        self.connects = connects
        self.world.set_refusing(connects == "are refused")

    # -- time and maintenance -------------------------------------------------------------

    @rule(seconds=st.sampled_from([0.001, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 600.0, 3600.0]))
    def tick(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(
        deadline=st.sampled_from(
            ["expiry", "max_idle", "max_lease", "health_check", "backoff", "maintenance"]
        ),
        offset=st.sampled_from([-1e-6, 0.0, 1e-6]),
    )
    def advance_to(self, deadline: str, offset: float) -> None:
        """Jump the clock to the next moment a comparison of this kind flips (± 1 µs)."""
        model = self.model
        assert model is not None
        config, now = model.config, self.clock()
        idle, leased = model.idle, list(model.leased.values())
        moments = {
            "expiry": [t.expires_at for t in [*idle, *leased]],
            "max_idle": [t.last_used + config.max_idle for t in idle],
            "max_lease": [t.leased_at + (config.max_lease or math.inf) for t in leased],
            "health_check": [t.last_used + config.health_check_after for t in idle],
            "backoff": [model.next_connect_at],
            "maintenance": [model.next_maintenance],
        }[deadline]
        future = [m + offset for m in moments if math.isfinite(m) and m + offset > now]
        if future:
            self.clock.advance_to(min(future))

    @rule(maxconn=st.integers(1, 3), minconn=st.integers(0, 3))
    def resize(self, maxconn: int, minconn: int) -> None:
        """`resize(minconn, maxconn)`: the coldest idle connections over the new maxconn are
        closed at once, the rest as they come back (see putconn's "retired"), and the pool
        refills to the new minconn."""
        model, pool = self.model, self.pool
        assert model is not None and pool is not None
        minconn = min(minconn, maxconn)
        if model.closed:
            self._expect_closed(lambda: pool.resize(minconn, maxconn))
            return
        model.config = dataclasses.replace(model.config, minconn=minconn, maxconn=maxconn)
        excess = model.size - maxconn
        closing = model.idle[: max(excess, 0)]
        model.idle = model.idle[len(closing) :]
        for track in closing:
            self._drop(track)
        while model.size < minconn and self.clock() >= model.next_connect_at:
            if self._connect(where="idle") is None:
                break  # the first failure ends the refill; the back-off holds the rest
        note_event(f"resize: {len(closing)} closed, {model.size - maxconn} over")
        pool.resize(minconn, maxconn)
        self._adopt_pending()
        for track in closing:
            assert track.conn.closed, f"resize dropped {track} without closing it"

    @rule()
    def maintain(self) -> None:
        model, pool = self.model, self.pool
        assert model is not None and pool is not None
        if model.closed:
            before = pool.stats()
            pool.maintain()  # a closed pool has nothing to maintain
            assert pool.stats() == before
            return
        closing = self._expect_maintenance()
        note_event(f"maintain: {len(closing)} closed, {len(model.pending)} opened")
        pool.maintain()
        self._adopt_pending()
        for track in closing:
            assert track.conn.closed, f"maintenance dropped {track} without closing it"

    @rule(in_use=st.booleans(), then_reopen=st.booleans())
    def closeall(self, in_use: bool, then_reopen: bool) -> None:
        """`closeall()`, or `closeall(in_use=False)` (checked-out connections are left to
        their borrowers, and closed when returned); check that the pool now refuses every
        call; maybe open a new pool."""
        model, pool = self.model, self.pool
        assert model is not None and pool is not None
        if model.closed:
            self._expect_closed(lambda: pool.closeall(in_use=in_use))
            return
        for track in [*model.idle, *(model.leased.values() if in_use else ())]:
            self._drop(track)
        model.idle = []
        if in_use:
            model.leased, model.keys = {}, {}
        model.closed = True
        pool.closeall(in_use=in_use)
        assert pool.closed
        self._expect_closed(pool.closeall)
        self._expect_closed(lambda: self._getconn(None))
        self._expect_closed(lambda: self._getconn(KEYS[0]))
        for conn in [loan.conn for loan in self.outstanding]:
            if self._expect_putconn(conn, None, False) == "closed":
                self._expect_closed(functools.partial(pool.putconn, conn))
        self.pool_matches_model()
        if then_reopen:
            self._open_pool()

    def _expect_closed(self, call: Callable[[], object]) -> None:
        assert self.pool is not None
        before = self.pool.stats()
        try:
            call()
        except pgpool.PoolClosed:
            pass
        else:
            raise AssertionError("a call on a closed pool did not raise PoolClosed")
        assert self.pool.stats() == before

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def pool_matches_model(self) -> None:
        model, pool = self.model, self.pool
        assert model is not None and pool is not None
        config = model.config
        pool._state.check_invariants()
        # stats() says what the model says.
        stats = pool.stats()
        over = stats.size > config.maxconn
        assert not over or pool._state.shrinking, "more connections than maxconn"
        gauges = {"idle": len(model.idle), "in_use": len(model.leased), "connecting": 0}
        gauges["waiting"] = 0
        actual = stats._asdict()
        assert {name: actual[name] for name in gauges} == gauges, "stats() gauges"
        assert {name: actual[name] for name in COUNTERS} == model.counters, "stats() counters"
        # The pool opened exactly the connections the model expected it to.
        assert self.accounted == len(self.world.connections), "unexpected connects"
        opened = [track.conn for track in model.all()]
        expected_connects = model.counters["connections_opened"] + model.configure_failures
        assert len(opened) == expected_connects, "connections_opened"
        for track in model.all():
            conn = track.conn
            if track.where == "idle":
                assert not conn.closed, f"an idle connection is closed: {track}"
                assert conn.get_transaction_status() == IDLE, f"idle but not IDLE: {track}"
                assert session_attributes(conn) == config.defaults, f"idle but dirty: {track}"
            elif track.where == "leased":  # nobody but its borrower closes it
                assert not conn.closed or track.client_closed, f"closed while out: {track}"
            else:
                assert conn.closed, f"the pool dropped {track} without closing it"
        if model.closed:  # everything is closed, but what closeall(in_use=False) left out
            assert pool.closed
            assert stats.idle == 0, "a closed pool keeps idle connections"
            left = [t.conn for t in model.leased.values()]
            assert all(conn.closed for conn in opened if conn not in left), "left open"


def machine_settings(examples: int, steps: int, **more: Any) -> settings:
    return settings(max_examples=scaled(examples), stateful_step_count=steps, deadline=None, **more)


class SimplePoolMachine(PoolMachine):
    """The same, on a SimpleConnectionPool: default timeout 0, and inline maintenance."""

    pool_class = pgpool.SimpleConnectionPool

    @initialize(config=pool_configs(inline_maintenance=True))
    def open_pool(self, config: PoolConfig) -> None:
        self.config = config
        self._open_pool()


class NullPoolMachine(PoolMachine):
    """The same, on a NullConnectionPool: `minconn` 0, and every connection returned to it
    is closed, whatever `close` says (so the model expects putconn(close=True) each time).
    Nothing is ever idle, so each getconn connects while there is room."""

    pool_class = pgpool.NullConnectionPool

    @initialize(config=pool_configs(keeps_idle=False))
    def open_pool(self, config: PoolConfig) -> None:
        self.config = config
        self._open_pool()

    def _expect_putconn(self, conn: Any, key: Hashable | None, close: bool) -> str:
        return super()._expect_putconn(conn, key, True)

    @rule(maxconn=st.integers(1, 3))
    def resize(self, maxconn: int) -> None:  # type: ignore[override]
        """`resize(0, maxconn)`: a null pool's minconn stays 0."""
        super().resize(maxconn, 0)

    @invariant()
    def nothing_idle(self) -> None:
        assert self.pool is None or self.pool.stats().idle == 0, "a null pool kept one idle"


TestThreadedPoolStateMachine = PoolMachine.TestCase
TestThreadedPoolStateMachine.settings = machine_settings(200, 50)
TestSimplePoolStateMachine = SimplePoolMachine.TestCase
TestSimplePoolStateMachine.settings = machine_settings(200, 50)
TestNullPoolStateMachine = NullPoolMachine.TestCase
TestNullPoolStateMachine.settings = machine_settings(100, 50)


# -- bugs the machine found, replayed by hand (Hypothesis' reproductions, made permanent) --
#
# Each is a shrunk failing example, as Hypothesis printed it, so that the bug fails the
# suite every time and not only when the search happens to find it again.


def replay(machine: PoolMachine, steps: Callable[[PoolMachine], None]) -> None:
    """Run `steps` on a fresh machine, check the model once more, and tear down."""
    try:
        steps(machine)
        machine.pool_matches_model()
    finally:
        machine.teardown()


def config(**changes: Any) -> PoolConfig:
    """A small pool's PoolConfig, with `changes`."""
    base = PoolConfig(
        minconn=0,
        maxconn=1,
        max_connecting=1,
        health_check_after=0.0,
        max_idle=1.0,
        max_lifetime=5.0,
        max_lease=None,
        configure=None,
        reset=None,
        maintenance_interval=None,
    )
    return dataclasses.replace(base, **changes)


def test_checkouts_counts_successful_getconn_calls_only() -> None:
    """stats().checkouts is documented as "successful getconn calls"; a getconn that finds
    its idle connection dead, drops it and opens another must count one checkout, not two.
    (A getconn that then times out must count none.)"""

    def steps(state: PoolMachine) -> None:
        state.open_pool(config=config(minconn=1))
        state.tick(seconds=0.001)
        state.kill_idle(which="hottest")
        state.getconn(key=None, explicit_timeout=True)  # drops #1, opens #2: 1 checkout

    replay(PoolMachine(), steps)


def test_explicit_begin_in_autocommit_is_rolled_back_on_return() -> None:
    """A borrower in autocommit mode runs BEGIN and returns the connection. psycopg2 does not
    know about that transaction, so `conn.rollback()` does nothing: the pool kept the
    connection idle *inside the open transaction*, and the next borrower inherited it (its
    locks, its uncommitted writes, which that borrower's commit would then commit)."""

    def steps(state: PoolMachine) -> None:
        state.open_pool(config=config(configure="autocommit"))
        loan = state.getconn(key=None, explicit_timeout=True)
        state.use(action="begin", loan=loan)
        state.putconn(how="plain", loan=loan)

    replay(PoolMachine(), steps)


def test_a_shrunk_pool_closes_returns_until_it_fits_and_a_grow_ends_that() -> None:
    """resize() below the connections checked out: the first returns are closed until the
    pool fits, the next is kept. A grow right after a shrink keeps every return (the shrink
    used to mark connections to close, and the grow did not unmark them)."""

    def steps(state: PoolMachine) -> None:
        state.open_pool(config=config(maxconn=3))
        loans = [state.getconn(key=None, explicit_timeout=True) for _ in range(3)]
        state.resize(maxconn=1, minconn=0)
        for loan in loans:
            state.putconn(how="plain", loan=loan)  # closed, closed, kept
        state.resize(maxconn=3, minconn=0)
        loans = [state.getconn(key=None, explicit_timeout=True) for _ in range(3)]
        state.resize(maxconn=1, minconn=0)
        state.resize(maxconn=3, minconn=0)
        for loan in loans:
            state.putconn(how="plain", loan=loan)  # all kept
        assert state.pool is not None and state.pool.stats().idle == 3

    replay(PoolMachine(), steps)

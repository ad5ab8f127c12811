"""The property suite behind docs/learn/properties.md: one set of checks, every pool.

Each *subject* is a pool class of the course (course/stepN_*.py), psycopg2's own pool (the
seed's) or pgpool, behind a few adapters so that one check can drive them all. Each check
returns an `Outcome`: "pass", "FAIL" with what was seen, or "n/a" when the property's
premise cannot arise for that pool. Two properties are checked by a Hypothesis state
machine (`check_bounded`, `check_exclusive`), whose shrunk counterexample becomes the
detail of a failing cell; the others are targeted scenarios with threads.

Every scenario runs on the real server. A `Probe` connection class (passed as psycopg2's
`connection_factory`) counts connections opened and still open, and can hold connects at
a gate so a test can look at the pool while a connect is in flight.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from support import DEADLINE, FakeClock, Task, select_one, wait_until

import pgpool
from course import (
    step0_why,
    step2_queue,
    step3_condition,
    step4_fifo,
    step4b_barging,
    step5_reserve,
    step6_maintained,
)
from testbed.embedded import run_sql

# -- outcomes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    verdict: str  # "pass", "FAIL" or "n/a"
    detail: str = ""


def passed(detail: str = "") -> Outcome:
    return Outcome("pass", detail)


def failed(detail: str) -> Outcome:
    return Outcome("FAIL", detail)


def not_applicable(detail: str) -> Outcome:
    return Outcome("n/a", detail)


def describe(error: BaseException | None) -> str:
    """An exception as one short line: its type and the first line of its message."""
    if error is None:
        return "no error"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}({lines[0] if lines else ''})"


# -- the probe ------------------------------------------------------------------------------


class Probe:
    """Counts the connections a pool opens and closes; can hold new connects at a gate."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.conns: list[Any] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # a connect reached the gate
        probe = self

        class ProbeConnection(psycopg2.extensions.connection):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                with probe.lock:
                    probe.in_flight += 1
                    probe.peak_in_flight = max(probe.peak_in_flight, probe.in_flight)
                probe.entered.set()
                try:
                    probe.gate.wait(DEADLINE)
                    super().__init__(*args, **kwargs)
                finally:
                    with probe.lock:
                        probe.in_flight -= 1
                with probe.lock:
                    probe.conns.append(self)

        self.factory = ProbeConnection

    @property
    def opened(self) -> int:
        return len(self.conns)

    @property
    def open(self) -> int:
        """Connections opened and not closed (by the pool, or by the server)."""
        return sum(1 for conn in self.conns if not conn.closed)

    def hold_connects(self) -> None:
        self.entered.clear()
        self.peak_in_flight = 0
        self.gate.clear()

    def release(self) -> None:
        self.gate.set()

    def close_all(self) -> None:
        self.release()
        for conn in self.conns:
            conn.close()


# -- the subjects ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Subject:
    """One pool under test, and how to drive it."""

    key: str  # short id, used in test ids
    title: str  # column heading in the matrix
    make: Callable[..., Any]  # (minconn, maxconn, dsn, probe, **options) -> pool
    blocking: bool = True  # getconn takes a timeout
    maintains: bool = False  # has maintain(), takes clock/max_idle/max_lease/health_check_after
    bounded: bool = True  # enforces maxconn at all

    def get(self, pool: Any, timeout: float) -> Any:
        return pool.getconn(timeout=timeout) if self.blocking else pool.getconn()

    def maintain(self, pool: Any) -> None:
        if self.maintains:
            pool.maintain()


MAINTENANCE_OPTIONS = ("clock", "max_idle", "max_lease", "health_check_after")


def _course(cls: Any, maintains: bool = False) -> Callable[..., Any]:
    def make(minconn: int, maxconn: int, dsn: str, probe: Probe, **options: Any) -> Any:
        if not maintains:
            options = {k: v for k, v in options.items() if k not in MAINTENANCE_OPTIONS}
        return cls(minconn, maxconn, dsn, connection_factory=probe.factory, **options)

    return make


def _psycopg2(minconn: int, maxconn: int, dsn: str, probe: Probe, **options: Any) -> Any:
    return psycopg2.pool.ThreadedConnectionPool(
        minconn, maxconn, dsn, connection_factory=probe.factory
    )


def _pgpool(minconn: int, maxconn: int, dsn: str, probe: Probe, **options: Any) -> Any:
    return pgpool.ThreadedConnectionPool(
        minconn,
        maxconn,
        dsn,
        connection_factory=probe.factory,
        maintenance_interval=None,
        **options,
    )


SUBJECTS = (
    Subject("step0", "0 NoPool", _course(step0_why.NoPool), bounded=False),
    Subject("step1", "1 psycopg2", _psycopg2, blocking=False),
    Subject("step2", "2 Queue", _course(step2_queue.QueuePool)),
    Subject("step3", "3 Condition", _course(step3_condition.ConditionPool)),
    Subject("step4", "4 FIFO", _course(step4_fifo.FifoPool)),
    # Chapter 4b's pool with no limit: it never stops barging.
    Subject(
        "step4b",
        "4b Barging, no limit",
        _course(functools.partial(step4b_barging.BargingPool, patience=math.inf)),
    ),
    Subject("step5", "5 Reserve", _course(step5_reserve.ReservePool)),
    Subject(
        "step6", "6 Maintained", _course(step6_maintained.MaintainedPool, True), maintains=True
    ),
    Subject("pgpool", "pgpool", _pgpool, maintains=True),
)


def waiting(pool: Any) -> int:
    """How many callers are asleep in the pool's getconn (0 for pools that never wait)."""
    if isinstance(pool, pgpool.AbstractConnectionPool):
        return pool.stats().waiting
    if isinstance(pool, step2_queue.QueuePool):
        return len(pool._tokens.not_empty._waiters)  # type: ignore[attr-defined]
    return int(getattr(pool, "waiting", 0))


class Harness:
    """One scenario: its probe, its pools, and the clean-up of both."""

    def __init__(self, subject: Subject, dsn: str) -> None:
        self.subject, self.dsn = subject, dsn
        self.probe = Probe()
        self.pools: list[Any] = []

    def make(self, minconn: int, maxconn: int, **options: Any) -> Any:
        pool = self.subject.make(minconn, maxconn, self.dsn, self.probe, **options)
        self.pools.append(pool)
        return pool

    def get(self, pool: Any, timeout: float = DEADLINE) -> Any:
        return self.subject.get(pool, timeout)

    def until_waiting(
        self, pool: Any, task: Task[Any], served: threading.Event | None = None
    ) -> bool:
        """Wait until `task` sleeps in getconn (True), or has finished or been `served`
        without waiting (False)."""

        def settled() -> bool:
            return task.done or waiting(pool) >= 1 or (served is not None and served.is_set())

        wait_until(settled, "a caller asleep in getconn")
        return waiting(pool) >= 1

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.probe.release()
        for pool in self.pools:
            with contextlib.suppress(Exception):
                pool.closeall()
        self.probe.close_all()


def finished_within(task: Task[Any], seconds: float) -> bool:
    try:
        wait_until(lambda: task.done, timeout=seconds)
    except AssertionError:
        return False
    return True


@contextlib.contextmanager
def switch_interval(seconds: float) -> Iterator[None]:
    """Let the running thread keep the GIL until it blocks, as a busy thread often does:
    a woken thread then cannot run between two of our calls. Makes barging reproducible."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(seconds)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


# -- the state machine: never over maxconn, never one connection to two callers -----------

MACHINE_MAXCONN = 2


class PoolMachine(RuleBasedStateMachine):
    """Single-threaded calls a program makes, including returning a connection twice.

    Subclassed per (subject, property) by `machine_for`, with exactly one invariant, so that
    each property gets its own shrunk counterexample.
    """

    subject: Subject
    dsn: str

    def __init__(self) -> None:
        super().__init__()
        self.harness = Harness(self.subject, self.dsn)
        self.pool = self.harness.make(0, MACHINE_MAXCONN)
        self.held: list[Any] = []  # connections the program holds, one entry per getconn
        self.returned: list[Any] = []

    @rule()
    def getconn(self) -> None:
        with contextlib.suppress(Exception):  # full (or refused): a correct answer here
            self.held.append(self.harness.get(self.pool, 0.0))

    @precondition(lambda self: self.held)
    @rule(which=st.integers(0, 3))
    def putconn(self, which: int) -> None:
        conn = self.held.pop(which % len(self.held))
        self.pool.putconn(conn)
        self.returned.append(conn)

    def _not_held(self) -> list[Any]:
        return [conn for conn in self.returned if all(conn is not c for c in self.held)]

    @precondition(lambda self: self._not_held())
    @rule(which=st.integers(0, 3))
    def putconn_again(self, which: int) -> None:
        """A caller's bug: return a connection it already returned (and holds no more).
        The pool may refuse it."""
        stale = self._not_held()
        with contextlib.suppress(Exception):
            self.pool.putconn(stale[which % len(stale)])

    def teardown(self) -> None:
        self.harness.__exit__()


def machine_for(subject: Subject, dsn: str, prop: str) -> type[PoolMachine]:
    def bounded(self: PoolMachine) -> None:
        opened = self.harness.probe.open
        assert opened <= MACHINE_MAXCONN, f"{opened} connections open, maxconn {MACHINE_MAXCONN}"

    def exclusive(self: PoolMachine) -> None:
        ids = [id(conn) for conn in self.held]
        assert len(ids) == len(set(ids)), "one connection checked out by two callers"

    check = {"bounded": bounded, "exclusive": exclusive}[prop]
    return type(
        f"{subject.key}_{prop}",
        (PoolMachine,),
        {"subject": subject, "dsn": dsn, f"check_{prop}": invariant()(check)},
    )


MACHINE_SETTINGS = settings(
    max_examples=25,
    stateful_step_count=8,
    derandomize=True,  # the same counterexample on every run: the matrix file stays put
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    print_blob=False,
)


def run_machine(subject: Subject, dsn: str, prop: str) -> Outcome:
    try:
        run_state_machine_as_test(machine_for(subject, dsn, prop), settings=MACHINE_SETTINGS)
    except AssertionError as error:
        # Hypothesis attaches the shrunk steps to the exception as notes (PEP 678).
        rules = ("state.getconn(", "state.putconn(", "state.putconn_again(")
        notes = getattr(error, "__notes__", [])
        steps = [note.removeprefix("state.") for note in notes if note.startswith(rules)]
        return failed(f"{error}, after `{'; '.join(steps)}`")
    return passed()


def check_bounded(subject: Subject, dsn: str) -> Outcome:
    """State machine, maxconn 2: at most 2 connections are open after any sequence of calls."""
    return run_machine(subject, dsn, "bounded")


def check_exclusive(subject: Subject, dsn: str) -> Outcome:
    """State machine, maxconn 2: no connection is held by two callers at once, even after a
    caller returned a connection twice."""
    return run_machine(subject, dsn, "exclusive")


# -- targeted scenarios ---------------------------------------------------------------------


def check_waits(subject: Subject, dsn: str) -> Outcome:
    """A caller at a full pool waits, and gets the connection the next return frees."""
    with Harness(subject, dsn) as h:
        pool = h.make(0, 1)
        mine = h.get(pool)
        other = Task(h.get, pool, 5.0)
        if not h.until_waiting(pool, other):
            error = other.error()
            if error is not None:
                return failed(f"a caller at a full (0, 1) pool is refused: {describe(error)}")
            return failed("a caller at a full (0, 1) pool gets a second connection at once")
        pool.putconn(mine)
        if not finished_within(other, 2.0):  # the waiter must wake when it is served
            return failed("the waiter still sleeps 2 s after the connection came back")
        error = other.error()
        if error is not None:
            return failed(f"the waiter was not served by the return: {describe(error)}")
        served = other.result()
        pool.putconn(served)
        if served is not mine:
            return failed("the waiter got a new connection, not the one returned")
        return passed()


def check_fifo(subject: Subject, dsn: str) -> Outcome:
    """A caller that queued first is served first, even against the thread that returns a
    connection and asks again at once (barging)."""
    with Harness(subject, dsn) as h:
        pool = h.make(0, 1)
        mine = h.get(pool)
        has_it, let_go = threading.Event(), threading.Event()

        def first_in_line() -> None:
            conn = h.get(pool, DEADLINE)
            has_it.set()
            let_go.wait(DEADLINE)
            pool.putconn(conn)

        other = Task(first_in_line)
        if not h.until_waiting(pool, other, has_it):
            let_go.set()
            why = "it refuses" if other.error() else "no bound"
            return not_applicable(f"nobody ever waits ({why})")
        with switch_interval(1.0):
            pool.putconn(mine)
            try:
                again = h.get(pool, 0.2)
            except Exception:
                again = None
        let_go.set()
        if again is not None:
            stolen = not has_it.is_set()
            pool.putconn(again)
            other.result()
            if stolen:
                return failed(
                    "a caller waits at a full (0, 1) pool; the holder returns its connection"
                    " and asks again at once: it gets it back, the waiter keeps waiting"
                )
        other.result()
        return passed()


def check_close_wakes(subject: Subject, dsn: str) -> Outcome:
    """closeall() wakes callers waiting for a connection, with an error."""
    with Harness(subject, dsn) as h:
        pool = h.make(0, 1)
        mine = h.get(pool)
        other = Task(h.get, pool, 2.0)
        if not h.until_waiting(pool, other):
            return not_applicable("nobody ever waits")
        pool.closeall()
        woke = finished_within(other, 1.0)
        error = other.error()
        with contextlib.suppress(Exception):
            pool.putconn(mine)
        if not woke:
            return failed(f"a waiter still sleeps 1 s after closeall; then: {describe(error)}")
        if error is None:
            return failed("a waiter got a connection from a closed pool")
        return passed()


def check_unlocked_connect(subject: Subject, dsn: str) -> Outcome:
    """While one caller's connect is in flight, another caller's putconn does not wait."""
    with Harness(subject, dsn) as h:
        pool = h.make(0, 2)
        mine = h.get(pool)
        h.probe.hold_connects()
        connecting = Task(h.get, pool, DEADLINE)
        assert h.probe.entered.wait(DEADLINE), "the connect never started"
        returning = Task(pool.putconn, mine)
        blocked = not finished_within(returning, 1.0)
        h.probe.release()
        pool.putconn(connecting.result())
        returning.result()
        if blocked:
            return failed("putconn waits for another caller's connect to finish (held 1 s)")
        return passed()


def check_connect_budget(subject: Subject, dsn: str, callers: int = 8) -> Outcome:
    """A spike at an empty pool starts at most 2 connects at once (max_connecting). A pool
    that connects under its lock passes by connecting one at a time (the row above)."""
    with Harness(subject, dsn) as h:
        pool = h.make(0, callers)
        h.probe.hold_connects()
        tasks = [Task(h.get, pool, DEADLINE) for _ in range(callers)]
        # Until every caller is connecting, or half a second passed with some still not: a
        # pool that lets them all connect shows all of them (a fixed count in the matrix,
        # not however many had started when the third did).
        with contextlib.suppress(AssertionError):
            wait_until(lambda: h.probe.in_flight >= callers, timeout=0.5)
        peak = h.probe.peak_in_flight
        h.probe.release()
        for task in tasks:
            pool.putconn(task.result())
        if peak > 2:
            return failed(f"{callers} callers at an empty pool: {peak} connects in flight at once")
        return passed(f"at most {peak} in flight")


def check_no_churn(subject: Subject, dsn: str) -> Outcome:
    """At (1, 3), connections that come back are kept for the next burst."""
    with Harness(subject, dsn) as h:
        pool = h.make(1, 3)
        for _ in range(3):
            burst = [h.get(pool) for _ in range(3)]
            for conn in burst:
                pool.putconn(conn)
        if h.probe.opened > 3:
            return failed(f"(1, 3), three bursts of three: {h.probe.opened} connects (3 would do)")
        return passed()


def check_reaps_idle(subject: Subject, dsn: str) -> Outcome:
    """Returned connections stay while in use, and are closed (down to minconn) once idle
    longer than max_idle."""
    with Harness(subject, dsn) as h:
        clock = FakeClock()
        pool = h.make(1, 3, clock=clock, max_idle=10.0)
        burst = [h.get(pool) for _ in range(3)]
        for conn in burst:
            pool.putconn(conn)
        clock.advance(1.0)
        subject.maintain(pool)
        if h.probe.open < 3:
            return failed(f"closes {3 - h.probe.open} of 3 connections the moment they come back")
        clock.advance(10.0)
        subject.maintain(pool)
        if h.probe.open > 1:
            return failed(
                f"{h.probe.open} connections idle 11 s (max_idle 10 s, minconn 1) stay open"
            )
        return passed()


# Kill a backend if it still exists (a pool may have closed it already), and wait for it.
KILL = "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE pid = %s"


def check_live(subject: Subject, dsn: str) -> Outcome:
    """After the server killed an idle connection, getconn hands out a working one."""
    with Harness(subject, dsn) as h:
        clock = FakeClock()
        pool = h.make(1, 1, clock=clock, health_check_after=0.5)
        conn = h.get(pool)
        pid = conn.get_backend_pid()
        pool.putconn(conn)
        run_sql(dsn, KILL, (pid,))
        clock.advance(1.0)
        conn = h.get(pool)
        try:
            select_one(conn)
        except psycopg2.Error as error:
            return failed(f"hands out an idle connection the server killed: {describe(error)}")
        finally:
            with contextlib.suppress(Exception):
                pool.putconn(conn)
        return passed()


def check_reclaims(subject: Subject, dsn: str) -> Outcome:
    """A connection checked out and never returned is taken back after max_lease."""
    if not subject.bounded:
        return not_applicable("no bound: a forgotten connection takes nobody's place")
    with Harness(subject, dsn) as h:
        clock = FakeClock()
        pool = h.make(0, 1, clock=clock, max_lease=5.0)
        h.get(pool)  # and forgotten
        clock.advance(6.0)
        subject.maintain(pool)
        try:
            conn = h.get(pool, 0.2)
        except Exception as error:
            return failed(f"a forgotten connection keeps the only slot: {describe(error)}")
        pool.putconn(conn)
        return passed()


def check_clean_return(subject: Subject, dsn: str) -> Outcome:
    """A connection returned inside a transaction is handed out again outside it."""
    with Harness(subject, dsn) as h:
        pool = h.make(0, 1)
        conn = h.get(pool)
        select_one(conn)  # psycopg2 opens a transaction: it is now "idle in transaction"
        pool.putconn(conn)
        conn = h.get(pool)
        status = conn.get_transaction_status()
        pool.putconn(conn)
        if status != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            return failed("a transaction left open by one borrower is handed to the next")
        return passed()


@dataclass(frozen=True)
class Property:
    key: str
    title: str
    check: Callable[[Subject, str], Outcome]


PROPERTIES = (
    Property("bounded", "never more than maxconn connections", check_bounded),
    Property("exclusive", "never one connection to two callers", check_exclusive),
    Property("waits", "waits instead of failing", check_waits),
    Property("fifo", "first come, first served", check_fifo),
    Property("close_wakes", "closeall wakes the waiters", check_close_wakes),
    Property("unlocked_connect", "no connect under the lock", check_unlocked_connect),
    Property("connect_budget", "a spike starts few connects", check_connect_budget),
    Property("no_churn", "no reconnect churn", check_no_churn),
    Property("reaps_idle", "reaps idle connections", check_reaps_idle),
    Property("live", "hands out live connections", check_live),
    Property("reclaims", "reclaims leaked connections", check_reclaims),
    Property("clean_return", "cleans returned connections", check_clean_return),
)

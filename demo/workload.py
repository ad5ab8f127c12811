"""The worker threads: the same load for every pool, and what each thread saw.

A worker loops: check out a connection, run ``SELECT pg_sleep(query)``, commit, return it,
pause. It records how long each checkout waited, and while it waits it sits in `waiting`
(thread number -> since when), which is the queue the view draws. A pool that refuses
instead of waiting (psycopg2.pool's "connection pool exhausted") is retried every
millisecond, the way code written for it has to.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import itertools
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool

import pgpool
from demo.adapter import Adapter, CourseAdapter, PgpoolAdapter, Psycopg2Adapter
from demo.scenarios import Scenario

RETRY_PAUSE = 0.001  # between "exhausted" retries
ERROR_PAUSE = 0.05  # after a failed request, so a dead server is not hammered by the demo


class EventLog:
    """Timestamped lines from every source (phases, faults, pools, workers), thread-safe."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._events: deque[tuple[float, str, str]] = deque(maxlen=500)
        self._count = 0

    def add(self, who: str, message: str) -> None:
        with self._lock:
            self._events.append((self._clock(), who, message))
            self._count += 1

    def since(self, count: int) -> tuple[int, list[tuple[float, str, str]]]:
        """Events added after the first `count` (at most the last 500), and the new count."""
        with self._lock:
            new = min(self._count - count, len(self._events))
            return self._count, list(self._events)[len(self._events) - new :]

    def last(self, n: int) -> list[tuple[float, str, str]]:
        with self._lock:
            return list(self._events)[-n:]


@dataclass
class Built:
    pool: Any
    adapter: Adapter
    retry_exhausted: bool  # the pool raises at once when full, instead of waiting


class _Counter:
    def __init__(self) -> None:
        self.value = 0
        self._lock = threading.Lock()

    def add(self) -> None:
        with self._lock:
            self.value += 1


def _connection_factory(delay: float, opened: _Counter) -> type[Any]:
    """A psycopg2 `connection_factory` that takes `delay` seconds longer to connect (as if
    the server were far away) and counts connects. Every pool here passes its keyword
    arguments on to psycopg2.connect, so they all get the same slow, counted connects."""

    class DemoConnection(psycopg2.extensions.connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            if delay:
                time.sleep(delay)
            super().__init__(*args, **kwargs)
            opened.add()

    return DemoConnection


# --pool names the demo knows, besides "module:Class": psycopg2.pool, and the course's
# pools (course/, docs/learn/), each with the same getconn/putconn/closeall.
COURSE_POOLS = {
    "queue": "course.step2_queue:QueuePool",
    "condition": "course.step3_condition:ConditionPool",
    "fifo": "course.step4_fifo:FifoPool",
    "reserve": "course.step5_reserve:ReservePool",
    "maintained": "course.step6_maintained:MaintainedPool",
}
KNOWN_POOLS = ("pgpool", "psycopg2", *COURSE_POOLS)


def check_name(kind: str) -> None:
    """Raise ValueError unless `kind` names a pool `build` can make."""
    if kind not in KNOWN_POOLS and ":" not in kind.strip(":"):
        raise ValueError(f"unknown pool {kind!r}: use {', '.join(KNOWN_POOLS)} or module:Class")


def _keywords(cls: type[Any]) -> set[str]:
    """The keyword arguments `cls(...)` takes itself (not passing them on to connect)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        with contextlib.suppress(TypeError, ValueError):
            for p in inspect.signature(init).parameters.values():
                if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                    names.add(p.name)
    return names


def build(
    kind: str, scenario: Scenario, dsn: str, opened: _Counter, held: Callable[[], list[Any]]
) -> Built:
    """Make the pool named `kind` for `scenario`; raise ValueError for an unknown name."""
    factory = _connection_factory(scenario.connect_delay, opened)
    lo, hi = scenario.minconn, scenario.maxconn
    if kind == "pgpool":
        options = {"name": "pgpool", **scenario.pgpool_options}
        ours = pgpool.ThreadedConnectionPool(lo, hi, dsn, connection_factory=factory, **options)
        return Built(ours, PgpoolAdapter(ours, hi), retry_exhausted=False)
    if kind == "psycopg2":
        pool = psycopg2.pool.ThreadedConnectionPool(lo, hi, dsn, connection_factory=factory)
        return Built(pool, Psycopg2Adapter(pool, hi), retry_exhausted=True)
    check_name(kind)
    module_name, _, class_name = COURSE_POOLS.get(kind, kind).partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load pool {kind!r}: {exc}") from exc
    # pgpool's options this pool also has (timeout, max_idle, max_lease, ...); any other
    # keyword would be passed on to psycopg2.connect and rejected there.
    accepted = _keywords(cls)
    options = {k: v for k, v in scenario.pgpool_options.items() if k in accepted}
    pool = cls(lo, hi, dsn, connection_factory=factory, **options)
    return Built(pool, CourseAdapter(pool, hi, held), retry_exhausted=True)


class Workload:
    """One pool under the scenario's load: its threads, counters and queue."""

    def __init__(
        self, kind: str, scenario: Scenario, dsn: str, log: EventLog, clock: Callable[[], float]
    ) -> None:
        self.name = kind.rpartition(":")[2] if ":" in kind else kind
        self.scenario = scenario
        self.log = log
        self.clock = clock
        self.opened = _Counter()
        self.queries = 0
        self.errors = 0
        self.max_wait = 0.0
        self.active = 0  # threads numbered below this work; the others stand by
        self.waiting: dict[int, float] = {}  # thread -> when it asked for a connection
        self.held: dict[int, Any] = {}  # thread -> connection it holds
        self.leaked: list[Any] = []  # connections "forgotten" by the leak fault
        self._leak_requested = False
        self._last_error_logged = -1.0
        self._stop = threading.Event()
        self._lock = threading.Lock()  # guards the counters above
        self.built = build(kind, scenario, dsn, self.opened, self._holding)
        self._threads = [
            threading.Thread(target=self._work, args=(i,), name=f"demo-{self.name}-{i}")
            for i in range(scenario.threads)
        ]

    def _holding(self) -> list[Any]:
        """Connections the threads hold, forgotten ones included."""
        return [*dict(self.held).values(), *self.leaked]

    def start(self) -> None:
        for t in self._threads:
            t.daemon = True  # a pool that never returns cannot keep the demo from ending
            t.start()

    def leak_one(self) -> None:
        """Make thread 0 forget the next connection it checks out."""
        self._leak_requested = True

    def stop(self) -> None:
        self._stop.set()
        deadline = time.monotonic() + 5
        for t in self._threads:
            if t.ident is not None:  # started
                t.join(max(0.0, deadline - time.monotonic()))
        with contextlib.suppress(Exception):
            self.built.pool.closeall()
        for conn in self.leaked:
            with contextlib.suppress(Exception):
                conn.close()

    def longest_wait(self) -> float:
        """The longest checkout so far, counting the threads still waiting (a starved
        thread never finishes one)."""
        oldest = min(dict(self.waiting).values(), default=None)
        now = self.clock()
        return max(self.max_wait, 0.0 if oldest is None else now - oldest)

    def leaked_ids(self) -> set[int]:
        return {id(c) for c in self.leaked}

    def _work(self, i: int) -> None:
        sc, pool = self.scenario, self.built.pool
        for n in itertools.count():
            if self._stop.is_set():
                return
            if i >= self.active:
                self._stop.wait(0.02)
                continue
            conn = self._checkout(i)
            if conn is None:
                continue
            if i == 0 and self._leak_requested:
                self._leak_requested = False
                self.leaked.append(conn)
                del self.held[i]
                self.log.add(self.name, f"thread {i} forgets a connection (never returned)")
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_sleep(%s)", (sc.query,))
                conn.commit()
            except psycopg2.Error as exc:
                self._failed(exc)
                del self.held[i]
                with contextlib.suppress(Exception):
                    pool.putconn(conn, close=True)
                self._stop.wait(ERROR_PAUSE)
                continue
            del self.held[i]
            try:
                pool.putconn(conn)
            except Exception as exc:  # a pool closed at the end, say
                self._failed(exc)
            with self._lock:
                self.queries += 1
            if sc.think:
                self._stop.wait(sc.think * (0.5 + (n * 7919 + i * 104729) % 1000 / 1000))

    def _checkout(self, i: int) -> Any:
        pool = self.built.pool
        start = self.clock()
        self.waiting[i] = start
        try:
            while not self._stop.is_set():
                try:
                    conn = pool.getconn()
                except psycopg2.pool.PoolError as exc:
                    if self.built.retry_exhausted and "exhausted" in str(exc):
                        time.sleep(RETRY_PAUSE)
                        continue
                    self._failed(exc)
                except Exception as exc:  # any pool's own errors too (the course's)
                    self._failed(exc)
                else:
                    self.held[i] = conn
                    waited = self.clock() - start
                    with self._lock:
                        self.max_wait = max(self.max_wait, waited)
                    return conn
                self._stop.wait(ERROR_PAUSE)
                return None
            return None
        finally:
            del self.waiting[i]

    def _failed(self, exc: BaseException) -> None:
        with self._lock:
            self.errors += 1
            now = self.clock()
            # One line per second at most: a dead server makes every thread fail at once.
            if now - self._last_error_logged < 1.0:
                return
            self._last_error_logged = now
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        # Cut to fit an 80-column line with the time and the pool's name in front.
        self.log.add(self.name, f"error: {type(exc).__name__}: {first_line}"[:56])

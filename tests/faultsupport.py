"""Helpers shared by the fault, chaos, fork, exit and security tests.

Nothing here knows pgpool's internals: the tests observe the pool from outside, through
its public API, `stats()`, the connector it calls, and the server's own `pg_stat_activity`.

A note on black holes: `TcpProxy.blackhole()` stops a userspace proxy from forwarding,
but the proxy's kernel keeps acknowledging every byte and every keepalive probe. TCP-level
dead-peer detection (`keepalives_*`, `tcp_user_timeout`) therefore never fires through it:
only a client-side time limit (libpq's `connect_timeout` for connects) can end a wait.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2
import psycopg2.extensions as ext
from psycopg2.extensions import make_dsn

from testbed.embedded import EmbeddedPostgres, run_sql

_names = itertools.count(1)

# libpq rounds connect_timeout up to 2 s; 2 is the shortest that means what it says.
CONNECT_TIMEOUT = 2
# Seconds added to every "ends within" bound: a loaded machine is slow, not wrong. Such a
# bound is a hang guard (the property is that it ends), never a performance figure.
SLACK = 5.0


def unique_app(prefix: str) -> str:
    """An application_name that marks one test's connections in pg_stat_activity."""
    return f"{prefix}-{next(_names)}-{time.monotonic_ns() % 1_000_000}"


def pool_dsn(dsn: str, app: str, **params: Any) -> str:
    """`dsn` with a short connect_timeout and `app` as application_name (plus `params`)."""
    params.setdefault("connect_timeout", CONNECT_TIMEOUT)
    return make_dsn(dsn, application_name=app, **params)


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0, what: str = "") -> None:
    """Poll `predicate` until it holds; fail the test if it does not within `timeout` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not reached within {timeout} s: {what or predicate}")
        time.sleep(0.02)


def scalar(conn: Any, sql: str, params: Any = None) -> Any:
    with conn.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
    return None if row is None else row[0]


def backend_pid(conn: Any) -> int:
    pid: int = conn.info.backend_pid  # libpq's own record: no round trip
    return pid


def count_backends(admin_dsn: str, app: str, like: bool = False) -> int:
    """Server sessions whose application_name is `app` (a LIKE pattern if `like`)."""
    match = "LIKE" if like else "="
    rows = run_sql(
        admin_dsn,
        f"SELECT count(*) FROM pg_stat_activity WHERE application_name {match} %s",
        (app,),
    )
    assert rows is not None
    count: int = rows[0][0]
    return count


def backend_pids(admin_dsn: str, app: str) -> set[int]:
    rows = run_sql(
        admin_dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (app,)
    )
    assert rows is not None
    return {row[0] for row in rows}


def kill_backends(admin_dsn: str, app: str, state: str | None = None) -> int:
    """pg_terminate_backend every backend of `app` (optionally only those in `state`),
    waiting until each has exited; return how many were killed."""
    sql = (
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))"
        " FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()"
    )
    params: tuple[Any, ...] = (app,)
    if state is not None:
        sql += " AND state = %s"
        params = (app, state)
    rows = run_sql(admin_dsn, sql, params)
    assert rows is not None
    count: int = rows[0][0]
    return count


def kill_pid(admin_dsn: str, pid: int) -> None:
    rows = run_sql(admin_dsn, "SELECT pg_terminate_backend(%s, 5000)", (pid,))
    assert rows == [(True,)], f"backend {pid} was not terminated"


def is_dirty(conn: Any) -> str | None:
    """Why `conn` must not be handed to a borrower (closed, in a transaction, in an error,
    or in an unknown state), or None if it is fit. Costs no round trip."""
    if conn.closed:
        return f"closed ({conn.closed})"
    status = conn.get_transaction_status()
    names = {
        ext.TRANSACTION_STATUS_ACTIVE: "ACTIVE",
        ext.TRANSACTION_STATUS_INTRANS: "INTRANS",
        ext.TRANSACTION_STATUS_INERROR: "INERROR",
        ext.TRANSACTION_STATUS_UNKNOWN: "UNKNOWN",
    }
    return names.get(status)


class CountingConnector:
    """A `connector=` for the pool that counts every connect attempt and its outcome.

    `gate`, when cleared, holds each connect before it starts (a connect as slow as the
    test wants); `started` and `finished` are set by the first attempt that gets there.
    """

    def __init__(self, connect: Callable[..., Any] = psycopg2.connect) -> None:
        self._connect = connect
        self._lock = threading.Lock()
        self.attempts = 0
        self.successes = 0
        self.failures = 0
        self.attempt_times: list[float] = []
        self.gate = threading.Event()
        self.gate.set()
        self.started = threading.Event()
        self.finished = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.attempts += 1
            self.attempt_times.append(time.monotonic())
        self.started.set()
        try:
            assert self.gate.wait(20), "a test left the connect gate closed"
            conn = self._connect(*args, **kwargs)
        except BaseException:
            with self._lock:
                self.failures += 1
            raise
        finally:
            self.finished.set()
        with self._lock:
            self.successes += 1
        return conn

    def attempts_between(self, start: float, end: float) -> int:
        with self._lock:
            return sum(1 for t in self.attempt_times if start <= t < end)


@dataclass
class Outcome:
    """What a callable run in a thread did: its result or its exception, if it finished."""

    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None
    elapsed: float = 0.0


def in_thread(fn: Callable[[], Any], name: str = "fault-test") -> tuple[threading.Thread, Outcome]:
    """Start `fn` in a daemon thread; the Outcome tells how it ended."""
    outcome = Outcome()

    def run() -> None:
        started = time.monotonic()
        try:
            outcome.result = fn()
        except BaseException as error:  # reported to the test, which decides
            outcome.error = error
        finally:
            outcome.elapsed = time.monotonic() - started
            outcome.done.set()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    return thread, outcome


def connector_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pgpool-connector")]


def require_scram(server: EmbeddedPostgres, role: str) -> None:
    """Make `role` authenticate with scram-sha-256 over TCP on `server` (others keep trust).

    The embedded server trusts everyone; prepending one pg_hba line and reloading makes a
    wrong password fail the way it does in production.
    """
    rows = server.execute("SHOW hba_file")
    assert rows is not None
    hba_path: str = rows[0][0]
    with open(hba_path) as hba:
        original = hba.read()
    line = f"host all {role} 127.0.0.1/32 scram-sha-256\n"
    with open(hba_path, "w") as hba:  # rewriting in place keeps the server user's ownership
        hba.write(line + original)
    server.execute("SELECT pg_reload_conf()")

    def enforced() -> bool:  # the reload is asynchronous: wait until a login needs a password
        try:
            conn = psycopg2.connect(
                make_dsn(server.dsn, user=role, passfile="/nonexistent"), password=""
            )
        except psycopg2.OperationalError:
            return True
        conn.close()
        return False

    wait_for(enforced, 15, "scram-sha-256 enforced for the role")


def wait_until_accepting(dsn: str, timeout: float = 30.0) -> None:
    def accepting() -> bool:
        try:
            run_sql(dsn, "SELECT 1")
        except psycopg2.Error:
            return False
        return True

    wait_for(accepting, timeout, "server accepting connections")

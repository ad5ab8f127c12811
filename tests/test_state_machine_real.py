"""The pool state machine of test_state_machine.py, on real psycopg2 connections.

Same rules, same model, same invariants; what changes is the world around the pool:

* connections are real, to the session's server, marked with a unique `application_name`;
* a kill is `pg_terminate_backend(pid)` from an admin connection: the client finds out at
  its next round trip, exactly as the fake imitates;
* a refused connect is still simulated (the connector raises psycopg2.OperationalError
  without connecting): the session's server is shared and must stay up;
* each connection handed out is also checked *on the server*: its session really is as
  read-only / isolated / deferrable as psycopg2's attributes say (`check_session`);
* time is still the fake clock: ages are the pool's arithmetic, not the server's.

Also here: a differential test of `FakeConnection` against psycopg2 itself, so that the
fast machine's fake keeps telling the truth about the driver.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
import pytest
from fakes import FakeClock, FakeConnection
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import run_state_machine_as_test
from test_state_machine import (
    PoolMachine,
    SimplePoolMachine,
    config,
    machine_settings,
    replay,
    scaled,
)

_worlds = itertools.count(1)
QUICK_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink)  # no "explain"
ISOLATION_NAMES = {
    None: "read committed",  # the server's default
    ext.ISOLATION_LEVEL_READ_UNCOMMITTED: "read uncommitted",
    ext.ISOLATION_LEVEL_READ_COMMITTED: "read committed",
    ext.ISOLATION_LEVEL_REPEATABLE_READ: "repeatable read",
    ext.ISOLATION_LEVEL_SERIALIZABLE: "serializable",
}


class Helpers:
    """Two connections every example of one test shares (a connect per example is slow):
    an admin one to kill backends from, and a stranger no pool knows."""

    def __init__(self, dsn: str) -> None:
        self.admin = psycopg2.connect(dsn, application_name="pgpool-sm-admin")
        self.admin.autocommit = True
        self.stranger = psycopg2.connect(dsn, application_name="pgpool-sm-stranger")

    def close(self) -> None:
        self.admin.close()
        self.stranger.close()


class RealWorld:
    """The machine's world on the session's PostgreSQL server (see `FakeWorld`)."""

    def __init__(self, dsn: str, helpers: Helpers) -> None:
        self.dsn = dsn
        self.app = f"pgpool-sm-{next(_worlds)}-{time.monotonic_ns() % 10**9}"
        self.clock = FakeClock()
        self.connections: list[Any] = []
        self.refusing = False
        self._pids: dict[int, int] = {}
        self._admin = helpers.admin
        self._stranger = helpers.stranger

    def pool_args(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return (self.dsn,), {"application_name": self.app, "connect_timeout": 10}

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        if self.refusing:
            raise psycopg2.OperationalError("connection refused (simulated by the test)")
        conn = psycopg2.connect(*args, **kwargs)
        self.connections.append(conn)
        self._pids[id(conn)] = conn.get_backend_pid()
        return conn

    def set_refusing(self, refusing: bool) -> None:
        self.refusing = refusing

    def kill(self, conn: Any) -> None:
        with self._admin.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", (self._pids[id(conn)],))
            row = cursor.fetchone()
        assert row is not None and row[0], "pg_terminate_backend failed"
        # Wait until the client can tell: the server's goodbye reaches the socket. (Faster
        # than pg_terminate_backend's own timeout, which polls every 100 ms.)
        poller = select.poll()
        poller.register(conn.fileno(), select.POLLIN)
        assert poller.poll(10_000), "a killed connection's socket did not turn readable"

    @staticmethod
    def begin(conn: Any) -> None:
        with conn.cursor() as cursor:
            # With autocommit off, psycopg2 sends BEGIN itself before the statement.
            cursor.execute("BEGIN" if conn.autocommit else "SELECT 1")

    @staticmethod
    def fail(conn: Any) -> None:
        with conn.cursor() as cursor:
            if conn.autocommit and conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE:
                cursor.execute("BEGIN")
            # The statement's own error is swallowed; a lost connection still raises.
            errors = (psycopg2.errors.DivisionByZero, psycopg2.errors.InFailedSqlTransaction)
            with contextlib.suppress(*errors):
                cursor.execute("SELECT 1/0")

    def stranger(self) -> Any:
        return self._stranger

    def check_session(self, conn: Any) -> None:
        """The server runs this connection's transactions as its attributes say."""
        with conn.cursor() as cursor:
            cursor.execute(
                "SELECT current_setting('transaction_read_only'),"
                " current_setting('transaction_isolation'),"
                " current_setting('transaction_deferrable')"
            )
            row = cursor.fetchone()
        if not conn.autocommit:
            conn.rollback()  # psycopg2 began a transaction (BEGIN READ ONLY ...) to run it
        expected = (
            "on" if conn.readonly else "off",
            ISOLATION_NAMES[conn.isolation_level],
            "on" if conn.deferrable else "off",
        )
        assert row == expected, (
            f"the server's session (read_only, isolation, deferrable) = {row} while psycopg2 "
            f"says autocommit={conn.autocommit}, readonly={conn.readonly}, "
            f"isolation_level={conn.isolation_level}, deferrable={conn.deferrable}"
        )

    def close(self) -> None:
        for conn in self.connections:
            conn.close()


@contextmanager
def on_real_server(machine: type[PoolMachine], dsn: str) -> Iterator[type[PoolMachine]]:
    """`machine`, in a `RealWorld` on the server at `dsn`."""
    helpers = Helpers(dsn)

    def make_world(self: PoolMachine) -> RealWorld:
        return RealWorld(dsn, helpers)

    try:
        yield type(f"RealServer{machine.__name__}", (machine,), {"make_world": make_world})
    finally:
        helpers.close()


@pytest.mark.parametrize("machine", [PoolMachine, SimplePoolMachine], ids=["threaded", "simple"])
def test_pool_state_machine_on_real_server(dsn: str, machine: type[PoolMachine]) -> None:
    # Every step costs round trips: on a failure, shrink the first bug found, no more.
    quick = machine_settings(40, 20, report_multiple_bugs=False, phases=QUICK_PHASES)
    with on_real_server(machine, dsn) as real_machine:
        run_state_machine_as_test(real_machine, settings=quick)


@pytest.mark.parametrize("how", ["reset=discard_all", "reset=reset_session", "autocommit off"])
def test_read_only_autocommit_session_survives_a_return(dsn: str, how: str) -> None:
    """A pool whose `configure` makes read-only autocommit sessions (psycopg2 implements
    `readonly` in autocommit mode with SET default_transaction_read_only on the server).
    After one return the next borrower got a read-WRITE session while `conn.readonly` still
    said True: DISCARD ALL / RESET ALL (the documented resets), or psycopg2 itself when the
    borrower turned autocommit off, reset the server setting, and the pool restores the
    attributes by comparing psycopg2's cached values, which did not change."""
    reset = how.removeprefix("reset=") if how.startswith("reset=") else None

    def steps(state: PoolMachine) -> None:
        state.open_pool(config=config(configure="readonly_autocommit", reset=reset))
        loan = state.getconn(key=None, explicit_timeout=True)
        if how == "autocommit off":
            state.use(action=("autocommit", False), loan=loan)
        state.putconn(how="plain", loan=loan)
        state.getconn(key=None, explicit_timeout=True)  # checks the server's session

    with on_real_server(PoolMachine, dsn) as real_machine:
        replay(real_machine(), steps)


# -- the fake against the driver ----------------------------------------------------------

OPERATIONS = [
    "kill",
    "begin",
    "fail",
    "rollback",
    "commit",
    "execute",
    "close",
    ("autocommit", True),
    ("autocommit", False),
    ("readonly", True),
    ("readonly", None),
    ("isolation_level", ext.ISOLATION_LEVEL_SERIALIZABLE),
    ("deferrable", True),
    "latin1",
]


def _observe(conn: Any) -> tuple[Any, ...]:
    return (
        conn.closed,
        conn.get_transaction_status(),
        conn.autocommit,
        conn.isolation_level,
        conn.readonly,
        conn.deferrable,
        conn.encoding,
    )


def _apply(conn: Any, operation: Any, kill: Any) -> str:
    """Do `operation` to `conn`; return the name of the exception it raised, if any."""
    try:
        if operation == "kill":
            kill()
        elif operation in ("begin", "fail"):
            if isinstance(conn, FakeConnection):
                getattr(conn, operation)()  # the fake's own test controls
            else:
                getattr(RealWorld, operation)(conn)
        elif operation == "execute":
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
        elif operation == "latin1":
            conn.set_client_encoding("LATIN1")
        elif operation in ("rollback", "commit", "close"):
            getattr(conn, operation)()
        else:
            setattr(conn, *operation)
    except psycopg2.Error as error:
        return type(error).__name__
    return ""


@settings(max_examples=scaled(400), deadline=None)
@given(operations=st.lists(st.sampled_from(OPERATIONS), max_size=8))
def test_fake_connection_behaves_like_psycopg2(dsn: str, operations: list[Any]) -> None:
    """What pgpool relies on: errors, `closed`, the transaction status and the session
    attributes after any sequence of borrower actions and a server-side kill."""
    real = psycopg2.connect(dsn, application_name="pgpool-fake-check")
    fake = FakeConnection()
    pid = real.get_backend_pid()
    admin = psycopg2.connect(dsn, application_name="pgpool-fake-check-admin")
    admin.autocommit = True
    killed = False

    def kill_real() -> None:
        nonlocal killed
        if not killed and not real.closed:
            with admin.cursor() as cursor:
                cursor.execute("SELECT pg_terminate_backend(%s)", (pid,))
            poller = select.poll()
            poller.register(real.fileno(), select.POLLIN)
            assert poller.poll(10_000), "a killed connection's socket did not turn readable"
        killed = True

    try:
        for operation in operations:
            outcome_real = _apply(real, operation, kill_real)
            outcome_fake = _apply(fake, operation, fake.kill)
            assert outcome_fake == outcome_real, f"{operation!r}: raised differently"
            assert _observe(fake) == _observe(real), f"after {operation!r}"
    finally:
        real.close()
        admin.close()

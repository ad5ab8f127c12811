"""In-memory stand-ins for a clock, a PostgreSQL server and psycopg2 connections.

They exist to test the pool's *logic* (bookkeeping, ageing, health checks, cleaning) fast
and deterministically; anything about the wire, the server or real SQL belongs in tests
against the real server. `FakeConnection` implements exactly what pgpool uses of a psycopg2
connection, and imitates psycopg2 where pgpool's correctness depends on it (checked against
psycopg2 2.9 and PostgreSQL by hand):

* A server-side kill is invisible until the next round trip: `closed` stays 0 and
  `get_transaction_status()` keeps its last value. The next statement, or a rollback of a
  transaction, then raises `psycopg2.OperationalError`, sets `closed` to 2 and the status
  to UNKNOWN. `rollback()`/`commit()` with no transaction are no-ops, so they do not notice.
  Only the socket tells: `fileno()` is one end of a socketpair, which turns readable when
  the connection is killed (the server's FATAL message), as a real one does.
* `get_transaction_status()` on a closed connection returns UNKNOWN; `rollback()`, the
  session-attribute setters, `cursor()` and `fileno()` raise `psycopg2.InterfaceError`.
* psycopg2 knows only the transactions it began itself (autocommit off, first statement).
  Setting a session attribute inside one raises `psycopg2.ProgrammingError`. A transaction
  begun with an explicit ``BEGIN`` in autocommit mode is invisible to it: `rollback()` does
  nothing, and the session attributes can still be changed. `begin()` imitates that.
* Session attributes are local, except in autocommit mode: there, setting `isolation_level`,
  `readonly` or `deferrable` sends a ``SET default_transaction_...`` (a round trip), and so
  does turning autocommit off while any of them is not None (they are set back to their
  defaults). The fake makes the same round trips, but keeps no server-side settings.
* `set_client_encoding()` is a no-op for the current encoding; otherwise it rolls back
  psycopg2's transaction and sends a SET (round trips). `encoding` is read-only.

Usage::

    clock, server = FakeClock(), FakeServer()
    pool = pgpool.ThreadedConnectionPool(
        1, 4, clock=clock, connector=server.connect, maintenance_interval=None
    )
    conn = pool.getconn()
    conn.kill()            # the server terminates the backend
    clock.advance(10)
"""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext

__all__ = ["FakeClock", "FakeConnection", "FakeCursor", "FakeServer"]


class FakeClock:
    """A monotonic clock that moves only when told to. Call it for the current time.

    It starts well away from zero, so code that uses 0.0 as "never" is not flattered.
    """

    def __init__(self, start: float = 1000.0) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    @property
    def now(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by `seconds` (>= 0) and return the new time."""
        if seconds < 0:
            raise ValueError(f"a monotonic clock cannot go back ({seconds} s)")
        self._now += seconds
        return self._now

    def advance_to(self, when: float) -> float:
        """Jump to exactly `when` (not earlier than now): for hitting a deadline to the bit."""
        if when < self._now:
            raise ValueError(f"a monotonic clock cannot go back ({when} < {self._now})")
        self._now = float(when)
        return self._now

    def __repr__(self) -> str:
        return f"FakeClock({self._now!r})"


_CHARACTERISTICS = ("isolation_level", "readonly", "deferrable")
_SESSION_ATTRIBUTES = frozenset({"autocommit", *_CHARACTERISTICS})


class FakeConnection:
    """A psycopg2 connection with no server behind it. See the module docstring.

    State for tests to look at: `killed` (terminated by the server, whether or not the
    client noticed yet), `statements` (every statement run, in order), `server`, and the
    connect arguments `args`/`kwargs`.
    """

    _numbers = itertools.count(1)
    # No libpq connection behind it: what psycopg2 reports for a closed one, so a cancel
    # request (the reclaim's) is not sent.
    pgconn_ptr = None
    # Session attributes (psycopg2's defaults are set in __init__, through __setattr__'s checks)
    autocommit: bool
    isolation_level: int | None
    readonly: bool | None
    deferrable: bool | None

    def __init__(self, server: FakeServer | None = None, *args: Any, **kwargs: Any) -> None:
        self.server = server
        self.args = args
        self.kwargs = kwargs
        self.number = next(self._numbers)
        self.closed = 0  # psycopg2: 0 open, 1 closed by close(), 2 lost (found broken)
        self.killed = False
        self.statements: list[str] = []
        self.notices: list[str] = []
        self.notifies: list[Any] = []
        self._encoding = "UTF8"
        self._status = ext.TRANSACTION_STATUS_IDLE
        self._driver_tx = False  # a transaction psycopg2 began (and so knows about)
        self._socket: tuple[int, int] | None = None  # (ours, the server's end)
        self._close_socket: Callable[[], object] = _nothing
        object.__setattr__(self, "autocommit", False)
        object.__setattr__(self, "isolation_level", None)
        object.__setattr__(self, "readonly", None)
        object.__setattr__(self, "deferrable", None)

    def __repr__(self) -> str:
        state = {0: "open", 1: "closed", 2: "lost"}[self.closed]
        return f"<FakeConnection #{self.number} {state}{' killed' if self.killed else ''}>"

    # -- what pgpool uses -----------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SESSION_ATTRIBUTES:
            self._check_open()
            if self._driver_tx:
                raise psycopg2.ProgrammingError("set_session cannot be used inside a transaction")
            if name != "autocommit":
                if self.autocommit:
                    self._statement()  # psycopg2: SET default_transaction_... on the server
            elif self.autocommit and not value and self._characteristics_set():
                self._statement()  # psycopg2: those settings back to their defaults
        object.__setattr__(self, name, value)

    def _characteristics_set(self) -> bool:
        return any(getattr(self, a) is not None for a in _CHARACTERISTICS)

    @property
    def status(self) -> int:
        """psycopg2's own view: BEGIN inside a transaction it began itself, else READY."""
        return ext.STATUS_BEGIN if self._driver_tx else ext.STATUS_READY

    def get_transaction_status(self) -> int:
        if self.closed:
            return ext.TRANSACTION_STATUS_UNKNOWN
        return self._status

    def rollback(self) -> None:
        self._end_transaction()

    def commit(self) -> None:
        self._end_transaction()

    def close(self) -> None:
        self.closed = 1
        self._driver_tx = False
        self._close_socket()

    @property
    def encoding(self) -> str:
        return self._encoding

    def set_client_encoding(self, encoding: str) -> None:
        self._check_open()
        name = encoding.replace("-", "").replace("_", "").upper()
        if name == self._encoding:
            return  # psycopg2: nothing to do, no round trip
        self._end_transaction()  # psycopg2 rolls back its transaction first
        self._statement()  # SET client_encoding
        self._encoding = name

    def cursor(self, *args: Any, **kwargs: Any) -> FakeCursor:
        self._check_open()
        return FakeCursor(self)

    def fileno(self) -> int:
        """A real socket (one end of a socketpair): it turns readable when the connection
        is killed, and may be poll()ed, shut down, or dup2()ed over after a fork."""
        self._check_open()
        if self._socket is None:
            ours, theirs = socket.socketpair()
            self._socket = (ours.detach(), theirs.detach())
            self._close_socket = weakref.finalize(self, _close_fds, *self._socket)
            if self.killed:
                self._server_says_goodbye()
        return self._socket[0]

    # -- test controls --------------------------------------------------------------------

    def kill(self) -> None:
        """The server terminates this backend; the client finds out at its next round trip
        (or by looking at the socket, which turns readable)."""
        self.killed = True
        if self._socket is not None:
            self._server_says_goodbye()

    def _server_says_goodbye(self) -> None:
        assert self._socket is not None
        with contextlib.suppress(OSError):
            os.write(self._socket[1], b"E")  # FATAL: terminating connection

    def begin(self) -> None:
        """Start a transaction as a borrower would: with autocommit off, by running a
        statement (psycopg2 sends BEGIN first, and knows); with autocommit on, by running an
        explicit ``BEGIN`` (psycopg2 does not know). A round trip: fails if killed."""
        self.execute("BEGIN" if self.autocommit else "SELECT 1")

    def fail(self) -> None:
        """Run a failing statement inside a transaction (begun as `begin` does if needed):
        the status becomes INERROR. The statement's error itself is swallowed."""
        if self.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE:
            self.begin()
        # The statement's own error is swallowed; a lost connection still raises.
        with contextlib.suppress(psycopg2.DataError, psycopg2.errors.InFailedSqlTransaction):
            self.execute("SELECT 1/0", fails=True)

    # -- internals --------------------------------------------------------------------

    def execute(self, sql: str, *, fails: bool = False) -> None:
        """Run a statement. The SQL is recorded, not interpreted, except a bare ``BEGIN``,
        ``ROLLBACK`` or ``COMMIT`` (the latter two in autocommit mode)."""
        self._statement()
        if not self.autocommit and not self._driver_tx:
            self._driver_tx = True  # psycopg2 sends BEGIN before the statement
            self._status = ext.TRANSACTION_STATUS_INTRANS
        self.statements.append(sql)
        if sql == "BEGIN" and self._status == ext.TRANSACTION_STATUS_IDLE:
            self._status = ext.TRANSACTION_STATUS_INTRANS  # (if not idle: a warning)
        elif sql in ("ROLLBACK", "COMMIT") and self.autocommit:
            self._status = ext.TRANSACTION_STATUS_IDLE  # ends a transaction begun by hand
        if fails:
            if self._status == ext.TRANSACTION_STATUS_INTRANS:
                self._status = ext.TRANSACTION_STATUS_INERROR
            raise psycopg2.errors.DivisionByZero("division by zero")

    def _check_open(self) -> None:
        if self.closed:
            raise psycopg2.InterfaceError("connection already closed")

    def _round_trip(self) -> None:
        self._check_open()
        if self.killed:
            self.closed = 2
            self._driver_tx = False
            raise psycopg2.OperationalError(
                "server closed the connection unexpectedly\n"
                "\tThis probably means the server terminated abnormally\n"
                "\tbefore or while processing the request.\n"
            )

    def _statement(self) -> None:
        """A statement reaches the server: it fails if the connection is lost, or if it is
        in an aborted transaction."""
        self._round_trip()
        if self._status == ext.TRANSACTION_STATUS_INERROR:
            raise psycopg2.errors.InFailedSqlTransaction(
                "current transaction is aborted, commands ignored until end of transaction block"
            )

    def _end_transaction(self) -> None:
        self._check_open()
        if not self._driver_tx:
            return  # psycopg2: "no transaction to end", no round trip
        self._round_trip()
        self._driver_tx = False
        self._status = ext.TRANSACTION_STATUS_IDLE


def _nothing() -> None:
    pass


def _close_fds(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


class FakeCursor:
    """The cursor of a `FakeConnection`: a context manager whose `execute` is a round trip."""

    def __init__(self, conn: FakeConnection) -> None:
        self.connection = conn
        self.closed = False

    def __enter__(self) -> FakeCursor:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def execute(self, sql: str, params: object = None) -> None:
        if self.closed:
            raise psycopg2.InterfaceError("cursor already closed")
        self.connection.execute(sql)

    def fetchone(self) -> tuple[Any, ...] | None:
        return (1,)

    def fetchall(self) -> list[tuple[Any, ...]]:
        return [(1,)]

    def close(self) -> None:
        self.closed = True


class FakeServer:
    """Hands out `FakeConnection`s; pass `server.connect` as a pool's `connector`.

    Set `refusing` (or call `refuse()`/`accept()`) to make connects fail with
    psycopg2.OperationalError, as when the server is down or full.
    """

    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []  # every connection opened, in order
        self.refused = 0  # connect attempts refused
        self.refusing = False

    @property
    def opened(self) -> int:
        return len(self.connections)

    def open_connections(self) -> list[FakeConnection]:
        return [c for c in self.connections if not c.closed]

    def refuse(self) -> None:
        self.refusing = True

    def accept(self) -> None:
        self.refusing = False

    def connect(self, *args: Any, **kwargs: Any) -> FakeConnection:
        if self.refusing:
            self.refused += 1
            raise psycopg2.OperationalError(
                'connection to server at "fake" failed: Connection refused'
            )
        conn = FakeConnection(self, *args, **kwargs)
        self.connections.append(conn)
        return conn

    def kill_all(self) -> None:
        """A server restart: every connection opened so far is terminated."""
        for conn in self.connections:
            conn.kill()

    @contextmanager
    def down(self) -> Iterator[None]:
        """Refuse connects for the duration of the block."""
        refusing, self.refusing = self.refusing, True
        try:
            yield
        finally:
            self.refusing = refusing

"""Security and hygiene: no password in anything the pool shows, no session state from one
borrower reaching the next, no dirty connection handed out, and no deadlock or lost slot
from callbacks that re-enter, raise or hang, from other threads, or after closeall.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Hashable, Iterator
from typing import Any

import psycopg2
import psycopg2.extensions as ext
import pytest
from fakes import FakeServer
from faultsupport import (
    backend_pid,
    in_thread,
    is_dirty,
    kill_backends,
    kill_pid,
    pool_dsn,
    require_scram,
    scalar,
    unique_app,
    wait_for,
)
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from psycopg2.extensions import make_dsn

import pgpool
from testbed.embedded import EmbeddedPostgres, run_sql

SECRET = "Pw-9f3K!x7-secret"
WRONG = "Pw-wrong-2b8Q-guess"
_roles = itertools.count(1)

# -- no secrets in output -----------------------------------------------------------------------


def _connect_args(
    style: str, dsn: str, role: str, password: str
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Pool arguments that carry `password` in one of the four ways libpq accepts it."""
    params = psycopg2.extensions.parse_dsn(dsn)
    host, port = params["host"], params["port"]
    app = unique_app("secret")
    if style == "uri":
        uri = f"postgresql://{role}:{password}@{host}:{port}/postgres?application_name={app}"
        return (uri + "&connect_timeout=2",), {}
    if style == "keyvalue":
        return (make_dsn(dsn, user=role, password=password, application_name=app),), {}
    if style == "kwargs":
        return (make_dsn(dsn, application_name=app),), {"user": role, "password": password}
    assert style == "env"  # PGPASSWORD, set by the caller
    return (make_dsn(dsn, user=role, application_name=app),), {}


STYLES = ["uri", "keyvalue", "kwargs", "env"]


def _text_of(error: BaseException) -> str:
    """Everything an exception can show: str, repr, traceback, and its whole chain."""
    return "".join(traceback.format_exception(error)) + repr(error) + str(error)


def _assert_clean(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, f"a password leaked into: {text[:2000]}"


@pytest.fixture
def role(pg_server: Any) -> Iterator[str]:
    name = f"pgpool_secret_{next(_roles)}"
    pg_server.execute(f"CREATE ROLE {name} LOGIN PASSWORD %s", (SECRET,))
    yield name
    pg_server.execute(f"DROP ROLE IF EXISTS {name}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("style", STYLES)
def test_no_password_in_repr_stats_errors_logs_or_warnings(
    style: str,
    dsn: str,
    role: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if style == "env":
        monkeypatch.setenv("PGPASSWORD", SECRET)
    args, kwargs = _connect_args(style, dsn, role, SECRET)
    caplog.set_level(logging.DEBUG)
    shown: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # A generous timeout: `other` waits for the connector's connect, which a loaded
        # machine makes slow; the call meant to time out below has a short one of its own.
        # No background maintenance: it would reclaim `conn` and `other` too, had the steps
        # before their return taken longer than max_lease; maintain() below reclaims.
        pool = pgpool.ThreadedConnectionPool(
            1,
            2,
            *args,
            timeout=10,
            max_lease=0.3,
            reset=_failing_reset,
            maintenance_interval=None,
            **kwargs,
        )
        conn = pool.getconn()
        assert scalar(conn, "SELECT current_user") == role  # the password did get through
        other = pool.getconn()
        shown += [repr(pool), str(pool), repr(pool.stats()), str(pool.stats()), pool.name]
        for attempt in (
            lambda: pool.getconn(timeout=0),  # exhausted
            lambda: pool.getconn(timeout=0.2),  # timed out
            lambda: pool.putconn(conn, key="wrong"),
            lambda: pool.putconn(object()),
        ):
            with pytest.raises(pgpool.PoolError) as error:
                attempt()
            shown.append(_text_of(error.value))
        kill_pid(dsn, backend_pid(other))
        pool.putconn(other)  # a broken return: logged
        pool.putconn(conn)  # the reset fails: logged with its traceback
        forgotten = pool.getconn()
        time.sleep(0.4)
        pool.maintain()  # reclaims the forgotten lease: logged with the borrower's stack
        assert forgotten.closed and pool.stats().leases_reclaimed == 1
        pool.closeall()
        for attempt in (pool.getconn, lambda: pool.putconn(conn), pool.closeall):
            with pytest.raises(pgpool.PoolClosed) as error:
                attempt()
            shown.append(_text_of(error.value))
        shown += [repr(pool), repr(pool.stats())]
    shown += [str(w.message) for w in caught]
    assert caplog.records, "nothing was logged: the log check checked nothing"
    shown += [caplog.text, *(r.getMessage() for r in caplog.records)]
    shown += [
        "".join(traceback.format_exception(*r.exc_info)) for r in caplog.records if r.exc_info
    ]
    _assert_clean("\n".join(shown), SECRET)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("template", "password"),
    [
        # A '/' the user forgot to percent-encode: libpq reads "postgres:<start>" as host:port.
        ("postgresql://postgres:{}@127.0.0.1:1/postgres", "Sup3r/S3cret-Pw"),
        # A space the user forgot to quote: libpq complains about the word after it.
        ("host=127.0.0.1 port=1 user=postgres password={}", "Sup3r S3cret-Pw"),
    ],
    ids=["uri-unencoded-slash", "keyvalue-unquoted-space"],
)
def test_a_mistyped_dsn_leaks_no_fragment_of_its_password(template: str, password: str) -> None:
    """libpq quotes pieces of a DSN it cannot use. When the mistake is inside the password,
    the piece it quotes is part of the password, and must be masked too. (No connection is
    attempted: libpq rejects these DSNs before opening a socket.)"""
    with pytest.raises(psycopg2.Error) as error:
        pgpool.ThreadedConnectionPool(1, 1, template.format(password))
    text = _text_of(error.value)
    for fragment in re.split(r"[ /]", password):
        assert fragment not in text, f"{fragment!r} (part of the password) leaked: {text}"


# What a caller may pass in the wrong place, each carrying SECRET: a URI, a key=value
# string, the same as bytes, and a settings object (a dict of connect() keywords).
MISPLACED = [
    f"postgresql://app:{SECRET}@db.example/app",
    f"host=db.example user=app password={SECRET}",
    f"password={SECRET}".encode(),
    {"host": "db.example", "user": "app", "password": SECRET},
]


def _argument_errors(value: Any) -> Iterator[tuple[str, Callable[[], object]]]:
    """Every entry point that validates its arguments, each given `value` where it does not
    belong: (what was called, the call)."""
    server = FakeServer()
    for cls in (
        pgpool.ThreadedConnectionPool,
        pgpool.SimpleConnectionPool,
        pgpool.NullConnectionPool,
    ):
        yield f"{cls.__name__}(value, 10)", lambda cls=cls: cls(value, 10, "dbname=x")
        yield f"{cls.__name__}(1, value)", lambda cls=cls: cls(1, value, "dbname=x")
    for option in pgpool.PoolOptions._fields:
        if option not in ("minconn", "maxconn"):
            kwargs = {"connector": server.connect, option: value}
            yield (
                f"{option}=value",
                lambda kwargs=kwargs: pgpool.ThreadedConnectionPool(0, 1, **kwargs),
            )
    yield "DBHelper(minconn=value)", lambda: pgpool.DBHelper("dbname=x", minconn=value).pool
    pool = pgpool.ThreadedConnectionPool(
        0, 2, connector=server.connect, maintenance_interval=None, timeout=5
    )
    held = pool.getconn("mine")
    yield "resize(value, 5)", lambda: pool.resize(value, 5)
    yield "resize(1, value)", lambda: pool.resize(1, value)
    yield "getconn(timeout=value)", lambda: pool.getconn(timeout=value)
    yield "connection(timeout=value)", lambda: pool.connection(timeout=value).__enter__()
    yield "wait(value)", lambda: pool.wait(value)
    yield "open(timeout=value)", lambda: pool.open(timeout=value)
    yield "putconn(conn, key=value)", lambda: pool.putconn(held, key=value)
    yield "closeall(timeout=value)", lambda: pool.closeall(timeout=value)
    if isinstance(value, Hashable):  # two callers waiting with the same key
        other = pool.getconn()
        first = threading.Thread(target=lambda: pool.putconn(pool.getconn(value), key=value))
        first.start()
        wait_for(lambda: pool.stats().waiting == 1, what="the first caller with the key waits")
        yield "getconn(key=value) twice", lambda: pool.getconn(value)
        pool.putconn(other)
        first.join(10)
    pool.putconn(held, key="mine")
    pool.closeall()


@pytest.mark.parametrize("value", MISPLACED, ids=["uri", "keyvalue", "bytes", "dict"])
def test_the_pools_own_argument_errors_never_print_a_connection_string(value: Any) -> None:
    """`ThreadedConnectionPool(dsn, 1, 10)`, sizes and DSN swapped, once raised "minconn must
    be an int ..., got str 'postgresql://app:<password>@...'". Each entry point that checks
    its arguments refuses the misplaced value by name, with nothing of it in the message."""
    refused = []
    for what, call in _argument_errors(value):
        with pytest.raises((TypeError, ValueError, pgpool.PoolError)) as error:
            call()
            pytest.fail(f"{what} was accepted")
        _assert_clean(_text_of(error.value), SECRET)
        refused.append(what)
    assert len(refused) >= 28, refused  # every entry point above was tried


def _failing_reset(conn: Any) -> None:
    raise RuntimeError("reset failed on purpose")


@pytest.fixture
def scram_server(restartable_server: EmbeddedPostgres) -> Iterator[tuple[EmbeddedPostgres, str]]:
    """A server on which `role` must give its password (scram-sha-256), not trusted."""
    role = "pgpool_scram"
    restartable_server.execute(f"CREATE ROLE {role} LOGIN PASSWORD %s", (SECRET,))
    require_scram(restartable_server, role)
    yield restartable_server, role


@pytest.mark.timeout(60)
@pytest.mark.parametrize("style", STYLES)
def test_wrong_password_errors_show_no_password(
    style: str,
    scram_server: tuple[EmbeddedPostgres, str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server, role = scram_server
    if style == "env":
        monkeypatch.setenv("PGPASSWORD", WRONG)
    caplog.set_level(logging.DEBUG)
    args, kwargs = _connect_args(style, server.dsn, role, WRONG)
    shown: list[str] = []
    # minconn > 0: the constructor fails with the driver's own error.
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed") as e:
        pgpool.ThreadedConnectionPool(1, 2, *args, **kwargs)
    shown.append(_text_of(e.value))
    # minconn 0: a caller that cannot wait connects itself and gets the driver's error; one
    # that waits for the connector gets a PoolTimeout carrying the last connect error.
    pool = pgpool.ThreadedConnectionPool(0, 1, *args, timeout=0.3, **kwargs)
    with pytest.raises(psycopg2.OperationalError, match="password authentication") as e:
        pool.getconn(timeout=0)
    assert not isinstance(e.value, pgpool.PoolError)
    shown.append(_text_of(e.value))
    with pytest.raises(pgpool.PoolTimeout, match="password authentication") as waited:
        pool.getconn()
    assert isinstance(waited.value.__cause__, psycopg2.OperationalError)
    shown.append(_text_of(waited.value))
    shown += [repr(pool), repr(pool.stats())]
    pool.closeall()
    shown.append(caplog.text)
    _assert_clean("\n".join(shown), WRONG, SECRET)


@pytest.mark.timeout(60)
def test_password_rotated_under_a_running_pool_shows_in_no_log(
    scram_server: tuple[EmbeddedPostgres, str], caplog: pytest.LogCaptureFixture
) -> None:
    """The password changes on the server: maintenance's refills now fail and are logged.
    Neither the old password (the pool's) nor the new one appears."""
    server, role = scram_server
    caplog.set_level(logging.DEBUG)
    app = unique_app("rotated")
    pool = pgpool.ThreadedConnectionPool(
        1,
        2,
        make_dsn(server.dsn, user=role, application_name=app),
        password=SECRET,
        maintenance_interval=0.05,
    )
    try:
        server.execute(f"ALTER ROLE {role} PASSWORD %s", (WRONG,))
        pool.putconn(pool.getconn(), close=True)  # below minconn: maintenance refills ...
        wait_for(lambda: pool.stats().connect_errors > 0, 10, "a failed refill")  # ... and fails
        with pytest.raises(psycopg2.Error) as error:
            pool.getconn(timeout=1)
        text = caplog.text + _text_of(error.value) + repr(pool.stats())
    finally:
        pool.closeall()
    _assert_clean(text, SECRET, WRONG)


# -- no session leaks between borrowers ---------------------------------------------------------

SETTINGS = [
    "search_path",
    "statement_timeout",
    "TimeZone",
    "default_transaction_read_only",
    "application_name",
    "work_mem",
]


def _session_view(conn: Any) -> dict[str, Any]:
    """What a borrower can observe of the session it was handed (one round trip each)."""
    old_autocommit = conn.autocommit
    view: dict[str, Any] = {
        "autocommit": conn.autocommit,
        "isolation_level": conn.isolation_level,
        "readonly": conn.readonly,
        "deferrable": conn.deferrable,
        "status": conn.get_transaction_status(),
    }
    conn.autocommit = True
    for name in SETTINGS:
        view[name] = scalar(conn, "SELECT current_setting(%s)", (name,))
    view["current_user"] = scalar(conn, "SELECT current_user::text")
    view["session_user"] = scalar(conn, "SELECT session_user::text")
    view["temp_tables"] = scalar(
        conn, "SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()"
    )
    view["prepared"] = scalar(conn, "SELECT count(*) FROM pg_prepared_statements")
    view["advisory_locks"] = scalar(
        conn,
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()",
    )
    view["listening"] = scalar(conn, "SELECT count(*) FROM pg_listening_channels()")
    view["cursors"] = scalar(conn, "SELECT count(*) FROM pg_cursors")
    conn.autocommit = old_autocommit
    return view


def _leave_a_mess(conn: Any, identity: str, leak_role: str) -> None:
    """Everything a careless (or hostile) borrower can leave in a session."""
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SET search_path = leak_schema, public")
        cur.execute("SET statement_timeout = '1234s'")
        cur.execute("SET TimeZone = 'Pacific/Chatham'")
        cur.execute("SET work_mem = '7MB'")
        cur.execute("SET application_name = 'not-the-pool'")
        cur.execute("CREATE TEMP TABLE leak_tmp (secret text)")
        cur.execute("INSERT INTO leak_tmp VALUES ('tenant A data')")
        cur.execute("PREPARE leak_stmt AS SELECT 1")
        cur.execute("SELECT pg_advisory_lock(4242)")
        cur.execute("LISTEN leak_channel")
        cur.execute("DECLARE leak_cursor CURSOR WITH HOLD FOR SELECT 1")
        cur.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        if identity == "role":
            cur.execute(f"SET ROLE {leak_role}")
        else:
            cur.execute(f"SET SESSION AUTHORIZATION {leak_role}")
    # psycopg2's own session attributes, and a failed transaction left open.
    conn.autocommit = False
    conn.set_session(isolation_level="SERIALIZABLE", readonly=True, deferrable=True)
    with pytest.raises(psycopg2.Error), conn.cursor() as cur:
        cur.execute("SELECT 1 / 0")
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INERROR


@pytest.fixture
def leak_role(pg_server: Any) -> Iterator[str]:
    name = f"pgpool_leak_{next(_roles)}"
    pg_server.execute(f"CREATE ROLE {name} NOLOGIN")
    yield name
    pg_server.execute(f"DROP ROLE IF EXISTS {name}")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("identity", ["role", "session_authorization"])
@pytest.mark.parametrize(
    "reset", [pgpool.discard_all, pgpool.reset_session], ids=lambda f: f.__name__
)
def test_reset_leaves_nothing_for_the_next_borrower(
    dsn: str, leak_role: str, reset: Callable[[Any], None], identity: str
) -> None:
    with pgpool.ThreadedConnectionPool(
        1, 1, pool_dsn(dsn, unique_app("reset")), reset=reset
    ) as pool:
        conn = pool.getconn()
        pid = backend_pid(conn)
        fresh = _session_view(conn)
        conn.rollback()
        _leave_a_mess(conn, identity, leak_role)
        pool.putconn(conn)
        conn = pool.getconn()
        assert backend_pid(conn) == pid, "not the same session: the test tests nothing"
        after = _session_view(conn)
        pool.putconn(conn)
    assert after == fresh


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "reset", [pgpool.discard_all, pgpool.reset_session], ids=lambda f: f.__name__
)
def test_reset_leaves_no_notifications_or_notices_for_the_next_borrower(
    dsn: str, reset: Callable[[Any], None]
) -> None:
    """LISTEN must not reach the next borrower: neither the subscription (the server's
    side, undone by UNLISTEN) nor the notifications already received (psycopg2 keeps them
    in `conn.notifies`, and the notices in `conn.notices`, on the connection object)."""
    with pgpool.ThreadedConnectionPool(
        1, 1, pool_dsn(dsn, unique_app("notify")), reset=reset
    ) as pool:
        conn = pool.getconn()
        pid = backend_pid(conn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("LISTEN tenant_a")
            run_sql(dsn, "NOTIFY tenant_a, 'tenant A secret payload'")
            cur.execute("DO $$ BEGIN RAISE NOTICE 'tenant A secret notice'; END $$")
        assert conn.notifies and conn.notices  # received by borrower A, who ignores them
        pool.putconn(conn)
        conn = pool.getconn()
        assert backend_pid(conn) == pid
        scalar(conn, "SELECT 1")
        leftovers = (list(conn.notifies), list(conn.notices))
        pool.putconn(conn)
    assert leftovers == ([], []), f"borrower B received borrower A's messages: {leftovers}"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "reset", [pgpool.discard_all, pgpool.reset_session], ids=lambda f: f.__name__
)
def test_reset_keeps_the_client_encoding_in_step(dsn: str, reset: Callable[[Any], None]) -> None:
    """A borrower switches the client encoding (psycopg2 records it on the connection).
    The reset puts the server back to the connection's original encoding; psycopg2 must
    agree, or the next borrower's text is garbled or refused."""
    with pgpool.ThreadedConnectionPool(1, 1, pool_dsn(dsn, unique_app("enc")), reset=reset) as pool:
        conn = pool.getconn()
        original = conn.encoding
        conn.set_client_encoding("LATIN1")
        pool.putconn(conn)
        conn = pool.getconn()
        try:
            server_side = scalar(conn, "SHOW client_encoding")
            assert (conn.encoding, server_side) == (original, original)
            assert scalar(conn, "SELECT %s::text", ("é ü ß",)) == "é ü ß"
        finally:
            pool.putconn(conn)


@pytest.mark.timeout(60)
def test_what_the_default_return_resets_and_what_it_does_not(dsn: str, leak_role: str) -> None:
    """Without `reset=`, a return costs no round trip beyond a rollback: the transaction is
    rolled back and psycopg2's session attributes are restored; what was done with SQL
    stays in the session (use reset=pgpool.discard_all to wipe it)."""
    with pgpool.ThreadedConnectionPool(1, 1, pool_dsn(dsn, unique_app("default"))) as pool:
        conn = pool.getconn()
        pid = backend_pid(conn)
        fresh = _session_view(conn)
        conn.rollback()
        _leave_a_mess(conn, "role", leak_role)
        pool.putconn(conn)
        conn = pool.getconn()
        assert backend_pid(conn) == pid
        after = _session_view(conn)
        pool.putconn(conn)
    reset_by_default = ["autocommit", "isolation_level", "readonly", "deferrable", "status"]
    for key in reset_by_default:
        assert after[key] == fresh[key], key
    kept = {key: after[key] for key in after if after[key] != fresh[key]}
    assert kept == {
        "search_path": "leak_schema, public",
        "statement_timeout": "1234s",
        "TimeZone": "Pacific/Chatham",
        "work_mem": "7MB",
        "application_name": "not-the-pool",
        "default_transaction_read_only": "on",
        "current_user": leak_role,
        "temp_tables": 1,
        "prepared": 1,
        "advisory_locks": 1,
        "listening": 1,
        "cursors": 1,
    }


# -- never a dirty connection ------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_no_borrower_gets_a_dirty_connection_under_random_misuse_and_kills(dsn: str) -> None:
    admin = dsn

    class Misuse(RuleBasedStateMachine):
        """Borrowers that misbehave at random, and backends that die at random."""

        def __init__(self) -> None:
            super().__init__()
            self.app = unique_app("dirty")
            self.pool = pgpool.ThreadedConnectionPool(
                1, 3, pool_dsn(dsn, self.app), health_check_after=0, timeout=5
            )
            self.held: list[Any] = []
            self.returned: list[Any] = []

        @precondition(lambda self: len(self.held) < 3)
        @rule()
        def checkout(self) -> None:
            conn = self.pool.getconn()
            problem = _dirty_or_changed(conn)
            assert problem is None, f"handed out a connection that is {problem}"
            assert scalar(conn, "SELECT 1") == 1  # and alive: the check caught the dead
            conn.rollback()
            self.held.append(conn)

        @precondition(lambda self: self.held)
        @rule(
            i=st.integers(0, 2),
            what=st.sampled_from(
                [
                    "intrans",
                    "inerror",
                    "close",
                    "autocommit",
                    "readonly",
                    "isolation",
                    "kill",
                    "named_cursor",
                    "set",
                ]
            ),
        )
        def misuse(self, i: int, what: str) -> None:
            conn = self.held[i % len(self.held)]
            # A connection killed or closed earlier fails: that is the borrower's lot.
            with contextlib.suppress(psycopg2.Error):
                _misuse(conn, what, admin)

        @precondition(lambda self: self.held)
        @rule(i=st.integers(0, 2), close=st.booleans())
        def give_back(self, i: int, close: bool) -> None:
            conn = self.held.pop(i % len(self.held))
            self.pool.putconn(conn, close=close)
            self.returned.append(conn)

        @precondition(lambda self: self.returned)
        @rule()
        def give_back_twice(self) -> None:
            conn = self.returned[-1]
            if any(conn is held for held in self.held):
                return  # handed out again meanwhile: returning it is legitimate
            with pytest.raises(pgpool.PoolError):
                self.pool.putconn(conn)

        @precondition(lambda self: self.held)
        @rule()
        def give_back_with_a_wrong_key(self) -> None:
            with pytest.raises(pgpool.PoolError):
                self.pool.putconn(self.held[0], key="not-its-key")

        @rule()
        def give_back_a_stranger(self) -> None:
            stranger = psycopg2.connect(dsn)
            try:
                with pytest.raises(pgpool.PoolError):
                    self.pool.putconn(stranger)
            finally:
                stranger.close()

        @rule()
        def kill_idle_backends(self) -> None:
            kill_backends(admin, self.app, state="idle")

        @invariant()
        def bookkeeping(self) -> None:
            stats = self.pool.stats()
            assert stats.in_use == len(self.held), stats
            assert stats.size <= 3
            with self.pool._lock:
                self.pool._state.check_invariants()

        def teardown(self) -> None:
            for conn in self.held:
                self.pool.putconn(conn)
            self.pool.closeall()

    run_state_machine_as_test(
        Misuse, settings=settings(max_examples=15, stateful_step_count=30, deadline=None)
    )


def _dirty_or_changed(conn: Any) -> str | None:
    problem = is_dirty(conn)
    if problem is not None:
        return problem
    attributes = (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)
    if attributes != (False, None, None, None):
        return f"left with session attributes {attributes}"
    return None


def _misuse(conn: Any, what: str, admin: str) -> None:
    if what == "intrans":
        scalar(conn, "SELECT 1")
    elif what == "inerror":
        conn.autocommit = False
        with contextlib.suppress(psycopg2.errors.DivisionByZero):
            scalar(conn, "SELECT 1 / 0")
    elif what == "close":
        conn.close()
    elif what == "autocommit":
        if conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE:
            conn.autocommit = True
    elif what == "readonly":
        if conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE:
            conn.readonly = True
    elif what == "isolation":
        conn.isolation_level = ext.ISOLATION_LEVEL_SERIALIZABLE
    elif what == "kill":
        if not conn.closed:  # (it may be dead already: killed twice is still dead)
            run_sql(admin, "SELECT pg_terminate_backend(%s, 5000)", (backend_pid(conn),))
    elif what == "named_cursor":
        cur = conn.cursor(name="left_open")
        cur.execute("SELECT generate_series(1, 10)")
        cur.fetchone()
    elif what == "set":
        scalar(conn, "SET search_path = nowhere")


# -- callbacks that re-enter, raise or hang; other threads; after closeall ----------------------


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt (or an async exception), without stopping pytest."""


@pytest.mark.timeout(60)
def test_a_reset_callback_calling_getconn_does_not_deadlock(dsn: str) -> None:
    seen: list[BaseException] = []

    def reset(conn: Any) -> None:
        try:
            pool.getconn(timeout=0)  # the pool is full (maxconn 1): fails at once
        except BaseException as error:
            seen.append(error)
            raise
        repr(pool), pool.stats()

    pool = pgpool.ThreadedConnectionPool(1, 1, pool_dsn(dsn, unique_app("reenter")), reset=reset)
    with pool:
        conn = pool.getconn()
        _thread, outcome = in_thread(lambda: pool.putconn(conn))
        assert outcome.done.wait(15), "putconn deadlocked: a callback ran under the pool's lock"
        assert outcome.error is None  # the failed reset means "discard", not an error
        assert len(seen) == 1 and isinstance(seen[0], pgpool.PoolTimeout)
        assert conn.closed
        stats = pool.stats()
        assert stats.in_use == 0 and stats.broken_returns == 1
        pool.putconn(pool.getconn(timeout=5))


@pytest.mark.timeout(60)
def test_a_reset_callback_may_check_out_and_return_another_connection(dsn: str) -> None:
    used: list[int] = []

    def reset(conn: Any) -> None:
        if used:
            return
        other = pool.getconn(timeout=5)
        used.append(backend_pid(other))
        pool.putconn(other)  # runs this very callback again, re-entrantly

    pool = pgpool.ThreadedConnectionPool(2, 2, pool_dsn(dsn, unique_app("reenter2")), reset=reset)
    with pool:
        conn = pool.getconn()
        _thread, outcome = in_thread(lambda: pool.putconn(conn))
        assert outcome.done.wait(15), "putconn deadlocked"
        assert outcome.error is None
        assert pool.stats().in_use == 0 and pool.stats().idle == 2


@pytest.mark.timeout(60)
def test_a_hanging_reset_callback_blocks_only_its_own_return(dsn: str) -> None:
    release = threading.Event()
    stuck: list[Any] = []

    def reset(conn: Any) -> None:
        if conn is stuck[0]:
            assert release.wait(30)

    pool = pgpool.ThreadedConnectionPool(2, 3, pool_dsn(dsn, unique_app("hang")), reset=reset)
    with pool:
        stuck.append(pool.getconn())
        returning, outcome = in_thread(lambda: pool.putconn(stuck[0]))
        wait_for(lambda: pool.stats().in_use == 1 and pool.stats().idle == 1, what="stuck return")
        try:
            for _ in range(10):  # everything else goes on
                conn = pool.getconn(timeout=5)
                assert scalar(conn, "SELECT 1") == 1
                pool.putconn(conn)
            others = [pool.getconn(timeout=5) for _ in range(2)]  # the two other slots
            with pytest.raises(pgpool.PoolTimeout):
                pool.getconn(timeout=0.2)  # the stuck one still counts: maxconn holds
            for conn in others:
                pool.putconn(conn)
            assert not outcome.done.is_set()
        finally:
            release.set()
        returning.join(10)
        assert outcome.error is None
        assert pool.stats().in_use == 0 and pool.stats().idle == 3


@pytest.mark.timeout(60)
def test_a_reset_callback_that_raises_discards_the_connection(dsn: str) -> None:
    def reset(conn: Any) -> None:
        raise ValueError("the reset callback is broken")

    with pgpool.ThreadedConnectionPool(
        1, 1, pool_dsn(dsn, unique_app("raise")), reset=reset
    ) as pool:
        for _ in range(3):  # the slot is freed every time
            conn = pool.getconn(timeout=5)
            pool.putconn(conn)
            assert conn.closed
        stats = pool.stats()
        assert stats.in_use == 0 and stats.broken_returns == 3


@pytest.mark.timeout(60)
def test_an_interrupt_in_the_reset_callback_frees_the_slot(dsn: str) -> None:
    """KeyboardInterrupt (here, a stand-in BaseException) while a returned connection is
    cleaned: the interrupt propagates, and the connection's slot must not be lost."""
    interrupt = [True]

    def reset(conn: Any) -> None:
        if interrupt[0]:
            raise Interrupt

    with pgpool.ThreadedConnectionPool(
        1, 1, pool_dsn(dsn, unique_app("intr")), reset=reset
    ) as pool:
        conn = pool.getconn()
        with pytest.raises(Interrupt):
            pool.putconn(conn)
        interrupt[0] = False
        stats = pool.stats()
        assert stats.in_use == 0, f"the slot is lost: {stats}"
        pool.putconn(pool.getconn(timeout=2))


class _InterruptibleConnection(ext.connection):
    interrupt_next_cursor = False

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        if type(self).interrupt_next_cursor:
            type(self).interrupt_next_cursor = False
            raise Interrupt
        return super().cursor(*args, **kwargs)


@pytest.mark.timeout(60)
def test_an_interrupt_during_the_checkout_health_check_frees_the_slot(dsn: str) -> None:
    """KeyboardInterrupt while getconn pings an idle connection: getconn raises it, and the
    connection it was about to hand out must not stay checked out to nobody."""
    with pgpool.ThreadedConnectionPool(
        1,
        1,
        pool_dsn(dsn, unique_app("intr-ping")),
        health_check_after=0,
        connection_factory=_InterruptibleConnection,
    ) as pool:
        _InterruptibleConnection.interrupt_next_cursor = True
        with pytest.raises(Interrupt):
            pool.getconn()
        stats = pool.stats()
        assert stats.in_use == 0, f"the slot is lost: {stats}"
        pool.putconn(pool.getconn(timeout=2))


@pytest.mark.timeout(60)
def test_a_configure_callback_calling_getconn_does_not_deadlock(dsn: str) -> None:
    calls: list[BaseException] = []

    def configure(conn: Any) -> None:
        try:
            pool.getconn(timeout=0)
        except BaseException as error:
            calls.append(error)
            raise

    pool = pgpool.ThreadedConnectionPool(
        0, 1, pool_dsn(dsn, unique_app("conf")), configure=configure
    )
    with pool:
        # Inline (timeout=0): configure's error reaches the caller unchanged.
        _thread, outcome = in_thread(lambda: pool.getconn(timeout=0))
        assert outcome.done.wait(15), "getconn deadlocked: configure ran under the pool's lock"
        assert isinstance(outcome.error, pgpool.PoolTimeout)
        assert outcome.error is calls[0]
        # On the connector's thread: each attempt fails the same way, and the waiter's
        # timeout names that error.
        _thread, outcome = in_thread(lambda: pool.getconn(timeout=0.5))
        assert outcome.done.wait(15), "getconn deadlocked: configure ran under the pool's lock"
        assert isinstance(outcome.error, pgpool.PoolTimeout)
        assert "the last connect failed: PoolTimeout" in str(outcome.error)
        wait_for(lambda: pool.stats().connecting == 0, 10, "the last attempt to end")
        stats = pool.stats()
        assert stats.size == 0 and stats.connect_errors == len(calls) >= 2


@pytest.mark.timeout(60)
def test_a_raising_configure_callback_frees_the_slot(dsn: str) -> None:
    fail = [True]

    def configure(conn: Any) -> None:
        if fail[0]:
            raise Interrupt

    with pgpool.ThreadedConnectionPool(
        0, 1, pool_dsn(dsn, unique_app("conf2")), configure=configure
    ) as pool:
        with pytest.raises(Interrupt):
            pool.getconn(timeout=0)
        fail[0] = False
        assert pool.stats().size == 0
        wait_for(lambda: _try(pool), 10, "a connection once configure works")


def _try(pool: pgpool.AbstractConnectionPool) -> bool:
    try:
        pool.putconn(pool.getconn(timeout=1))
    except pgpool.PoolTimeout:
        return False
    return True


@pytest.mark.timeout(60)
def test_getconn_in_one_thread_putconn_in_another(dsn: str) -> None:
    with pgpool.ThreadedConnectionPool(1, 2, pool_dsn(dsn, unique_app("threads"))) as pool:
        _, got = in_thread(pool.getconn)
        assert got.done.wait(10) and got.error is None
        _, put = in_thread(lambda: pool.putconn(got.result))
        assert put.done.wait(10) and put.error is None
        assert pool.stats().in_use == 0


@pytest.mark.timeout(60)
def test_closeall_from_another_thread_wakes_waiters(dsn: str) -> None:
    with pgpool.ThreadedConnectionPool(1, 1, pool_dsn(dsn, unique_app("close"))) as pool:
        held = pool.getconn()
        _, waiting = in_thread(lambda: pool.getconn(timeout=30))
        wait_for(lambda: pool.stats().waiting == 1, what="a waiter")
        _, closing = in_thread(pool.closeall)
        assert closing.done.wait(10) and closing.error is None
        assert waiting.done.wait(10), "a waiter slept through closeall"
        assert isinstance(waiting.error, pgpool.PoolClosed)
        assert held.closed  # closeall closes checked-out connections, as psycopg2.pool does


@pytest.mark.timeout(60)
def test_everything_after_closeall(dsn: str) -> None:
    pool = pgpool.ThreadedConnectionPool(1, 2, pool_dsn(dsn, unique_app("after")))
    conn = pool.getconn()
    pool.closeall()
    assert pool.closed and conn.closed
    with pytest.raises(pgpool.PoolClosed):
        pool.getconn()
    with pytest.raises(pgpool.PoolClosed):
        pool.putconn(conn)
    with pytest.raises(pgpool.PoolClosed):
        pool.closeall()
    with pytest.raises(pgpool.PoolClosed), pool.connection():
        pass
    pool.maintain()  # a no-op, not an error
    stats = pool.stats()
    assert stats.size == 0 and stats.in_use == 0
    assert "closed" in repr(pool)

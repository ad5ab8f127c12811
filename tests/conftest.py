"""Shared test fixtures: a real PostgreSQL server, a restartable one, and fault tools.

By default the session starts its own throwaway server (`testbed.embedded.EmbeddedPostgres`,
about half a second). Set ``PGPOOL_TEST_DSN`` to run against an existing server instead;
tests that must restart or stop the server are then skipped, since we do not own it.

Other switches:

- ``--run-slow`` runs the tests marked ``@pytest.mark.slow`` (skipped otherwise).
- ``CI`` set in the environment selects the deterministic "ci" Hypothesis profile;
  ``HYPOTHESIS_PROFILE`` names a profile explicitly.
- ``PGPOOL_TEST_HANG_GRACE`` (seconds, default 20): see "A suite that fails instead of
  hanging" below.

A suite that fails instead of hanging. A regression in the pool (a return that no longer
rolls back, say) leaves a connection in a transaction holding locks; the next statement
that needs one waits inside libpq, where no Python signal handler runs, so pytest-timeout's
signal cannot end it. Three things keep the run bounded:

1. fixtures close their pools before dropping their tables (`support.table_fixture`);
2. admin statements (`run_sql`, all teardowns) carry `lock_timeout` and `statement_timeout`,
   and `support.drop_table` names and terminates the sessions that still hold a lock;
3. a watchdog thread here: when a test outlives its timeout by the grace period, it cancels
   the session server's queries that have waited that long for a lock, which hands control
   back to Python (the test fails, the run goes on); if the test still runs after another
   grace period, it dumps every thread's stack and ends the run with status 3.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import settings
from psycopg2.extensions import parse_dsn

from testbed.embedded import EmbeddedPostgres, run_sql

if TYPE_CHECKING:
    from testbed.proxy import TcpProxy

EXTERNAL_DSN = os.environ.get("PGPOOL_TEST_DSN")
NO_CONTROL = "PGPOOL_TEST_DSN points at an external server, which these tests cannot restart"

# Tests talk to a real server whose latency is not the code under test, so no deadlines.
settings.register_profile("default", max_examples=100, deadline=None)
# CI: the same examples on every run (a red build reproduces), and fewer of them.
settings.register_profile("ci", max_examples=30, deadline=None, derandomize=True)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default")
)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: run with --run-slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


# -- the hang breaker (point 3 above) ----------------------------------------------------------

HANG_GRACE = float(os.environ.get("PGPOOL_TEST_HANG_GRACE", "20"))
_session_dsn: str | None = None  # the session server's, once the pg_server fixture started it
_session_server: EmbeddedPostgres | None = None  # the same, when it is ours to stop


class _HangBreaker:
    """A daemon thread that ends a test stuck where pytest-timeout cannot reach it."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._test: tuple[str, float] | None = None  # (nodeid, when its time is up)
        self._cancelled = False
        threading.Thread(target=self._watch, name="hang-breaker", daemon=True).start()

    def start(self, nodeid: str, timeout: float) -> None:
        with self._lock:
            self._test = (nodeid, time.monotonic() + timeout + HANG_GRACE)
            self._cancelled = False

    def stop(self) -> None:
        with self._lock:
            self._test = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, HANG_GRACE / 4))
            with self._lock:  # decide under the lock, act after releasing it
                test, action = self._test, None
                if test is not None and time.monotonic() >= test[1]:
                    if not self._cancelled:
                        self._cancelled, action = True, "cancel"
                    elif time.monotonic() >= test[1] + HANG_GRACE:
                        action = "exit"
            if test is None or action is None:
                continue
            if action == "cancel":
                self._say(f"{test[0]} is past its timeout: cancelling queries that wait for a lock")
                self._cancel_lock_waits()
                continue
            # Like pytest-timeout's thread method: give the terminal back, then report.
            capture = self.config.pluginmanager.getplugin("capturemanager")
            if capture is not None:
                capture.suspend_global_capture(in_=True)
            self._say(f"{test[0]} still hangs: the stacks, then the run ends (status 3)")
            faulthandler.dump_traceback(file=sys.__stderr__, all_threads=True)
            if _session_server is not None:  # os._exit skips atexit: stop the server here
                with contextlib.suppress(Exception):
                    _session_server.close()
            os._exit(3)

    @staticmethod
    def _cancel_lock_waits() -> None:
        if _session_dsn is None:
            return
        try:
            rows = run_sql(
                _session_dsn,
                "SELECT pid, application_name, left(query, 60), pg_cancel_backend(pid)"
                " FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query_start < now() - make_interval(secs => %s)",
                (HANG_GRACE,),
            )
        except Exception as error:  # the server may be the problem: the exit stage remains
            _HangBreaker._say(f"could not cancel: {error!r}")
            return
        _HangBreaker._say(f"cancelled (pid, application_name, query, done): {rows}")

    @staticmethod
    def _say(message: str) -> None:
        print(f"\nhang breaker: {message}", file=sys.__stderr__, flush=True)


def _timeout_of(item: pytest.Item) -> float:
    """The test's pytest-timeout limit: its marker, else --timeout / the ini `timeout`."""
    marker = item.get_closest_marker("timeout")
    value = None
    if marker is not None:
        value = marker.args[0] if marker.args else marker.kwargs.get("timeout")
    if value is None:
        value = item.config.getoption("timeout", None) or item.config.getini("timeout")
    return float(value or 0) or 3600.0  # 0 means "no timeout": still end a hang, later


_hang_breaker: _HangBreaker | None = None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    global _hang_breaker
    if _hang_breaker is None:
        _hang_breaker = _HangBreaker(item.config)
    _hang_breaker.start(item.nodeid, _timeout_of(item))
    try:
        return (yield)
    finally:
        _hang_breaker.stop()


@dataclass(frozen=True)
class PgServer:
    """The session's server: its DSN, and the embedded server when we own it."""

    dsn: str
    embedded: EmbeddedPostgres | None  # None when PGPOOL_TEST_DSN is used

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]] | None:
        """Run one admin statement on a fresh autocommit connection (see `run_sql`)."""
        return run_sql(self.dsn, sql, params)

    def controllable(self) -> EmbeddedPostgres:
        """Return the embedded server, or skip the calling test if the server is external."""
        if self.embedded is None:
            pytest.skip(NO_CONTROL)
        return self.embedded


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    global _session_dsn, _session_server
    if EXTERNAL_DSN:
        _session_dsn = EXTERNAL_DSN
        yield PgServer(EXTERNAL_DSN, None)
        return
    with EmbeddedPostgres() as server:
        _session_dsn, _session_server = server.dsn, server
        yield PgServer(server.dsn, server)
        _session_dsn, _session_server = None, None


@pytest.fixture(scope="session")
def dsn(pg_server: PgServer) -> str:
    """DSN of the session's server (shared: do not restart it or exhaust its connections)."""
    return pg_server.dsn


@pytest.fixture
def restartable_server() -> Iterator[EmbeddedPostgres]:
    """A private server for this test alone, free to stop, restart or kill."""
    if EXTERNAL_DSN:
        pytest.skip(NO_CONTROL)
    with EmbeddedPostgres(max_connections=50) as server:
        yield server


def _terminate_backends(dsn: str, application_name: str) -> int:
    """Kill every backend of `application_name` except our own; return how many died.

    pg_terminate_backend's timeout makes it wait until each backend has exited, so the
    caller's next step sees them gone (PostgreSQL 14+).
    """
    rows = run_sql(
        dsn,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000))"
        " FROM pg_stat_activity WHERE application_name = %s AND pid <> pg_backend_pid()",
        (application_name,),
    )
    assert rows is not None
    count: int = rows[0][0]
    return count


@pytest.fixture
def terminate_backends() -> Callable[[str, str], int]:
    """``terminate_backends(dsn, application_name) -> int``: kill matching backends.

    Give the connections under test a distinctive ``application_name`` so that only
    they are hit, never other tests' connections on the shared server.
    """
    return _terminate_backends


@pytest.fixture
def tcp_proxy(pg_server: PgServer) -> Iterator[TcpProxy]:
    """A `TcpProxy` in front of the session server; use ``tcp_proxy.dsn_for(dsn)``."""
    from testbed.proxy import TcpProxy  # lazily: a broken benchmark breaks no pool test

    params = parse_dsn(pg_server.dsn)
    host = params.get("hostaddr") or params.get("host") or ""
    if not host or host.startswith("/") or "," in host:
        pytest.skip("the test server is not reachable over one TCP host (unix socket?)")
    with TcpProxy(host, int(params.get("port", 5432))) as proxy:
        yield proxy

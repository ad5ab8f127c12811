"""Shared test fixtures: a real PostgreSQL server, a restartable one, and fault tools.

By default the session starts its own throwaway server (`testbed.embedded.EmbeddedPostgres`,
about half a second). Set ``PGPOOL_TEST_DSN`` to run against an existing server instead;
tests that must restart or stop the server are then skipped, since we do not own it.

Other switches:

- ``--run-slow`` runs the tests marked ``@pytest.mark.slow`` (skipped otherwise).
- ``CI`` set in the environment selects the deterministic "ci" Hypothesis profile;
  ``HYPOTHESIS_PROFILE`` names a profile explicitly.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
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
    if EXTERNAL_DSN:
        yield PgServer(EXTERNAL_DSN, None)
        return
    with EmbeddedPostgres() as server:
        yield PgServer(server.dsn, server)


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

"""The suite fails instead of hanging (issue 12, part 4).

A pool regression can leave a connection in a transaction that holds a lock on a test's
table. The statement that then waits for the lock waits inside libpq, where pytest-timeout's
signal never gets to run: the suite used to print the failing test and hang in a fixture's
teardown until CI's limit. These tests leave exactly such a lock behind and check that each
layer of tests/conftest.py's defence ends the wait within seconds.

The bounds below (`BOUND`) only end a test that would otherwise hang; they are not timings.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions as ext
import pytest
from support import (
    Pools,
    Task,
    drop_table,
    make_table,
    table_fixture,
    unique_app_name,
    wait_backends,
)

import pgpool
import pgpool.connection
from testbed.embedded import ADMIN_LOCK_TIMEOUT_MS, run_sql

# Generous: lock_timeout, the holder's termination and a second DROP, on a loaded machine.
BOUND = ADMIN_LOCK_TIMEOUT_MS / 1000 + 15
ROOT = Path(__file__).resolve().parent.parent


def _table_exists(dsn: str, name: str) -> bool:
    return run_sql(dsn, "SELECT to_regclass(%s) IS NOT NULL", (name,)) == [(True,)]


def _hold_a_lock(conn: Any, table: str) -> None:
    """Leave `conn` in a transaction that holds a lock the table's DROP must wait for."""
    with conn.cursor() as cursor:
        cursor.execute(f"INSERT INTO {table} VALUES (1, 'held')")
    assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS


def _teardown_of(fixture: Iterator[str]) -> None:
    """Run the rest of a generator fixture: its teardown."""
    assert next(fixture, None) is None


def test_table_fixture_closes_the_pools_before_dropping(dsn: str) -> None:
    app = unique_app_name("teardown")
    pools = Pools(dsn)
    fixture = table_fixture(dsn, pools)
    table = next(fixture)
    pool = pools.threaded(0, 2, application_name=app)
    _hold_a_lock(pool.getconn(), table)  # checked out and never returned

    Task(_teardown_of, fixture).result(timeout=BOUND)

    assert pool.closed
    assert not _table_exists(dsn, table)
    wait_backends(dsn, app, 0)


def test_teardown_ends_when_the_pool_keeps_a_connection_in_a_transaction(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The regression of issue 12.4 itself: the return no longer cleans, so the pool keeps an
    idle connection whose transaction holds a lock on the fixture's table. (Breaking only the
    rollback is not enough: `clean` then sees psycopg2's status still in a transaction and the
    pool discards the connection, so the whole cleaning step is broken here.)"""
    monkeypatch.setattr(pgpool.connection, "clean", lambda *args: True)  # broken on purpose
    app = unique_app_name("teardown")
    pools = Pools(dsn)
    fixture = table_fixture(dsn, pools)
    table = next(fixture)
    pool = pools.threaded(0, 1, application_name=app)
    conn = pool.getconn()
    _hold_a_lock(conn, table)
    pool.putconn(conn)
    assert pool.stats().idle == 1  # kept, transaction and lock included

    Task(_teardown_of, fixture).result(timeout=BOUND)

    assert not _table_exists(dsn, table)
    wait_backends(dsn, app, 0)


def test_drop_table_ends_and_names_the_session_that_holds_a_lock(dsn: str) -> None:
    """A pool the teardown cannot close (or a stray connection): the DROP gives up after
    lock_timeout, terminates the holder, drops the table and fails naming the holder."""
    app = unique_app_name("teardown")
    table = make_table(dsn)
    pool = pgpool.ThreadedConnectionPool(0, 1, dsn, application_name=app, maintenance_interval=None)
    try:
        conn = pool.getconn()
        _hold_a_lock(conn, table)

        error = Task(drop_table, dsn, table).error(timeout=BOUND)

        assert isinstance(error, AssertionError), error
        assert table in str(error) and app in str(error) and "terminated" in str(error)
        assert not _table_exists(dsn, table)
        wait_backends(dsn, app, 0)
        with pytest.raises(psycopg2.OperationalError):
            conn.cursor().execute("SELECT 1")
    finally:
        pool.closeall()
        drop_table(dsn, table)


# -- the hang breaker, in a pytest run of its own ---------------------------------------------

HANGS = """
import socket

import psycopg2
from support import make_table


def test_waits_for_a_lock_in_the_test_body(dsn):
    table = make_table(dsn)
    holder = psycopg2.connect(dsn)
    holder.cursor().execute(f"LOCK TABLE {table}")  # and the transaction stays open
    waiter = psycopg2.connect(dsn, application_name="hang-breaker-victim")
    waiter.cursor().execute(f"SELECT * FROM {table}")  # waits inside libpq


def test_waits_for_a_server_that_never_answers():
    silent = socket.create_server(("127.0.0.1", 0))  # accepts, never speaks
    psycopg2.connect(host="127.0.0.1", port=silent.getsockname()[1], dbname="x")
"""


def _run_inner_pytest(tmp_path: Path, dsn: str, test: str) -> subprocess.CompletedProcess[str]:
    """Run one test of HANGS with the project's conftest and settings, a 1 s timeout and a
    1 s grace, against the session's server."""
    (tmp_path / "test_hangs.py").write_text(textwrap.dedent(HANGS))
    env = {
        **os.environ,
        "PGPOOL_TEST_DSN": dsn,
        "PGPOOL_TEST_HANG_GRACE": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)]),
    }
    env.pop("COV_CORE_SOURCE", None)  # pytest-cov's subprocess hook: not wanted here
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-c",
        str(ROOT / "pyproject.toml"),
        "--rootdir",
        str(ROOT),
        "-p",
        "conftest",
        "-p",
        "no:cacheprovider",
        "--timeout=1",
        f"{tmp_path / 'test_hangs.py'}::{test}",
    ]
    return subprocess.run(
        command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=BOUND * 4
    )


def test_a_lock_wait_in_a_test_body_is_cancelled_and_the_run_goes_on(
    tmp_path: Path, dsn: str
) -> None:
    run = _run_inner_pytest(tmp_path, dsn, "test_waits_for_a_lock_in_the_test_body")
    output = run.stdout + run.stderr
    assert run.returncode == 1, output  # 1: tests failed (3 would be the breaker's exit)
    assert "cancelling queries that wait for a lock" in output, output
    assert "hang-breaker-victim" in output, output
    assert "1 failed" in output, output


def test_a_wait_nothing_can_interrupt_ends_the_run(tmp_path: Path, dsn: str) -> None:
    run = _run_inner_pytest(tmp_path, dsn, "test_waits_for_a_server_that_never_answers")
    output = run.stdout + run.stderr
    assert run.returncode == 3, output
    assert "still hangs" in output, output
    assert "test_waits_for_a_server_that_never_answers" in output, output  # the stack dump

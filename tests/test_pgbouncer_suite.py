"""The pool's behaviour tests, run unchanged through PgBouncer in session mode (slow).

``pytest tests/test_pgbouncer_suite.py --run-slow`` starts a server and a session-mode
PgBouncer in front of it, then runs the behaviour test modules in a child pytest with
``PGPOOL_TEST_DSN`` pointing at PgBouncer. Every test passes except those listed in
`OBSERVE_THE_SERVER`, which check the pool by watching the *server's* sessions, something
PgBouncer hides on purpose:

- libpq's ``backend_pid`` is PgBouncer's own cancel key, not a server pid, so a test that
  kills or finds "this connection's backend" by pid cannot;
- when pgpool closes a connection, PgBouncer keeps the server connection for its next
  client, so a test that waits for the server's session count to drop waits forever;
- PgBouncer 1.18 rejects the ``options`` startup parameter (the run tells it to ignore
  it, which the admin helper needs), so a test that sets ``search_path`` that way sees
  the default.

Transaction mode is not run this way: several of these tests set session state (a
``readonly`` autocommit connection sends ``SET default_transaction_read_only``), which in
transaction mode stays on a server connection that other tests' clients then get, and
fails them in an order-dependent way. That is the hazard docs/deploying.md describes;
tests/test_pgbouncer.py runs the representative behaviour in both modes instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import EXTERNAL_DSN

from testbed.embedded import EmbeddedPostgres
from testbed.pgbouncer import MISSING, PgBouncer, find_pgbouncer

ROOT = Path(__file__).resolve().parent.parent
MODULES = [
    "test_api.py",
    "test_blocking.py",
    "test_misuse.py",
    "test_compat.py",
    "test_concurrency.py",
    "test_faults.py",
    "test_lifecycle.py",
    "test_helpers.py",
]
BY_PID = "identifies the connection's server session by libpq's backend_pid"
BY_COUNT = "waits for the server's session count to drop after pgpool closes connections"
BY_OPTIONS = "sets search_path with the options startup parameter"
OBSERVE_THE_SERVER = {
    "test_api.py::test_libpq_parameters_and_application_name_pass_through": BY_OPTIONS,
    "test_compat.py::test_rollback_failure": BY_PID,
    "test_faults.py::test_killed_idle_connection_is_checked_once_its_check_window_passed": BY_PID,
    "test_faults.py::test_within_the_check_window_a_killed_connection_is_handed_out_unchecked": (
        BY_PID
    ),
    "test_faults.py::test_backend_killed_mid_query": BY_PID,
    "test_faults.py::test_backend_killed_idle_in_transaction_returned_unnoticed": BY_PID,
    "test_faults.py::test_backend_killed_under_a_key": BY_PID,
    "test_lifecycle.py::test_returned_connections_stay_open_above_minconn": BY_COUNT,
    "test_lifecycle.py::test_psycopg2_pool_closes_returned_connections_above_minconn": BY_COUNT,
    "test_lifecycle.py::test_idle_above_minconn_reaped_after_max_idle": BY_COUNT,
    "test_lifecycle.py::test_refills_to_minconn_after_losing_connections": BY_COUNT,
    "test_lifecycle.py::test_maintenance_thread_reaps_without_any_call": BY_COUNT,
    "test_lifecycle.py::test_dead_idle_connection_replaced_transparently": BY_PID,
    "test_lifecycle.py::test_dead_idle_connection_replaced_with_a_key": BY_PID,
    "test_lifecycle.py::test_idle_connection_is_pinged_after_health_check_after": BY_PID,
    "test_lifecycle.py::test_no_ping_under_steady_use": BY_PID,
    "test_lifecycle.py::test_recently_used_dead_connection_is_discarded_on_return": BY_PID,
    "test_lifecycle.py::test_rollback_failure_discards_the_connection_and_frees_its_slot": BY_PID,
}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(find_pgbouncer() is None, reason=MISSING)
@pytest.mark.skipif(bool(EXTERNAL_DSN), reason="needs the embedded server's trust auth")
def test_behaviour_suite_through_session_mode_pgbouncer() -> None:
    with (
        EmbeddedPostgres() as server,
        PgBouncer(
            server.host,
            server.port,
            pool_mode="session",
            default_pool_size=60,  # session mode: one server connection per client one
            max_client_conn=300,
            extra={"ignore_startup_parameters": "extra_float_digits,options"},
        ) as bouncer,
    ):
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--tb=short"]
        args += [f"tests/{module}" for module in MODULES]
        for test in OBSERVE_THE_SERVER:
            args += ["--deselect", f"tests/{test}"]
        env = dict(os.environ, PGPOOL_TEST_DSN=bouncer.dsn)
        done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    print(f"through session-mode PgBouncer: {summary}")
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]

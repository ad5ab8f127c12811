"""Fork: a pool created before os.fork() keeps working on both sides, and children exit.

A psycopg2 connection is a socket to one server session. After fork() parent and child
share that socket; if the child closes its copy of the connection (explicitly, or by
garbage collection) libpq sends Terminate on it and the server ends the *parent's*
session. So the child must never use nor close the parent's connections, and must open
its own. And a child must be able to end: its exit runs the atexit hooks and finalizers it
inherited, which must not wait for a lock some parent thread held at the fork.

Each test runs a scenario of tests/fork_scenarios.py in a fresh interpreter (see there why
not in pytest's), where children end as applications' do: `sys.exit(0)`, a multiprocessing
target that returns or exits, `closeall()` first. A child that does not exit within the
scenario's generous deadline is killed and reported as hung.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from faultsupport import backend_pids, pool_dsn, unique_app, wait_for

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("fork_scenarios.py")


def run_scenario(name: str, dsn: str, argument: str = "") -> dict[str, Any]:
    """Run one scenario; return what it saw, after checking that every child exited (code
    0, not killed) and reported no error."""
    done = subprocess.run(
        [sys.executable, str(SCRIPT), name, dsn, argument],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(SCRIPT.parent)])},
    )  # fmt: skip
    assert done.returncode == 0, f"the scenario failed:\n{done.stderr}"
    figures: dict[str, Any] = json.loads(done.stdout)
    hung = [c for c in figures["children"] if c["hung"]]
    assert not hung, f"{len(hung)} of {len(figures['children'])} children never exited: {hung}"
    for child in figures["children"]:
        assert child["report"].get("ok"), f"a child failed:\n{child['report']}"
        assert child["exitcode"] == 0, child
    return figures


ENDINGS = ["exit", "closeall+exit", "mp-return", "mp-exit", "closeall+mp-return"]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("ending", ENDINGS)
def test_children_forked_while_threads_use_the_pool_exit(dsn: str, ending: str) -> None:
    """Six children, each forked while four parent threads churn getconn/putconn (so one of
    them likely holds the pool's lock), use the pool and end. The connector's finalizer
    kept the parent's lock and took it at exit: 39 of 40 such children never exited."""
    app = unique_app("fork-end")
    figures = run_scenario("endings", pool_dsn(dsn, app), ending)
    child_pids = {c["report"]["result"]["pid"] for c in figures["children"]}
    assert not child_pids & set(figures["parent_pids"]), "a child used a parent's session"
    assert figures["churn_errors"] == [] and figures["rounds"] > 0
    assert figures["failed_checks"] == 0 and figures["broken_returns"] == 0
    wait_for(lambda: not backend_pids(dsn, app), 10, "every session of the run ended")


@pytest.mark.timeout(150)
@pytest.mark.parametrize("ending", ["exit", "mp-return"])
def test_children_forked_while_dbhelper_creates_its_pool_use_it_and_exit(
    dsn: str, ending: str
) -> None:
    """DBHelper's lock (held while it creates its pool) is taken again by its atexit hook:
    a child forked while a parent thread held it waited for ever, at first use or exit."""
    run_scenario("dbhelper", pool_dsn(dsn, unique_app("fork-helper")), ending)


@pytest.mark.timeout(150)
def test_children_forked_while_the_django_registry_makes_a_pool_use_it(dsn: str) -> None:
    """The Django backend's registry makes its pools under a module lock: a child forked
    while a parent thread held it waited for ever at its first checkout."""
    run_scenario("django_registry", pool_dsn(dsn, unique_app("fork-django")), "exit")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", ["ThreadedConnectionPool", "SimpleConnectionPool"])
def test_child_gets_its_own_connections_and_parent_keeps_its(dsn: str, cls: str) -> None:
    app = unique_app("fork")
    figures = run_scenario("own_connections", pool_dsn(dsn, app), cls)
    child = figures["children"][0]["report"]["result"]
    parent_pids = set(figures["parent_pids"])
    assert child["inherited"] == [False, False], "the child was handed a parent's connection"
    assert child["shared_sockets"] == 0, "the child still holds the parent's sockets"
    assert len(set(child["pids"])) == 2
    assert not set(child["pids"]) & parent_pids, "the child was handed a parent's session"
    # The parent's sessions survived the child: same backends, still answering.
    assert figures["held_pid_after"] in parent_pids
    assert figures["idle_came_back"]
    assert figures["idle_pid_after"] in parent_pids
    wait_for(lambda: not backend_pids(dsn, app), 10, "every session of the run ended")


@pytest.mark.timeout(60)
def test_child_garbage_collecting_inherited_objects_spares_parent_sessions(dsn: str) -> None:
    figures = run_scenario("collected", pool_dsn(dsn, unique_app("fork-gc")))
    assert figures["after"] == figures["pids"]
    assert figures["failed_checks"] == 0


@pytest.mark.timeout(60)
def test_child_can_use_a_pool_a_parent_thread_was_waiting_on(dsn: str) -> None:
    figures = run_scenario("parent_waiter", pool_dsn(dsn, unique_app("fork-wait")))
    child = figures["children"][0]["report"]["result"]
    assert child["waiting"] == 0 and child["in_use"] == 0, child
    assert child["pid"] != figures["parent_pid"]
    assert figures["waiter_got_it"] and figures["still_answers"]


@pytest.mark.timeout(60)
def test_child_pool_has_its_own_maintenance(dsn: str) -> None:
    figures = run_scenario("maintenance", pool_dsn(dsn, unique_app("fork-maint")))
    child = figures["children"][0]["report"]["result"]
    assert child["connectors"] == 1, "no maintenance in the child"
    assert child["refilled"] >= 2, "the child's pool was not refilled to minconn"
    assert not set(child["pids"]) & set(figures["parent_pids"])
    assert all(figures["still_answer"])


@pytest.mark.timeout(60)
def test_a_pool_made_unopened_before_fork_is_opened_in_the_child(dsn: str) -> None:
    figures = run_scenario("unopened", pool_dsn(dsn, unique_app("fork-open")))
    child = figures["children"][0]["report"]["result"]
    assert not figures["connector_before"]
    assert child["connector"] and child["size"] == 2
    assert figures["size_after"] == 0  # the master still held nothing
    assert figures["size_opened"] == 2

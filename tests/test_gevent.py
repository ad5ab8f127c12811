"""pgpool under gevent with psycogreen (issue 12, part 3).

Monkey-patching is global and cannot be undone, so the scenarios run in a process of their
own (tests/gevent_scenarios.py, one run for the module) against the session's server; each
test here judges what one scenario reported. The time bounds are generous: they prove that
greenlets ran concurrently, they do not measure how fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("gevent_scenarios.py")


@pytest.fixture(scope="module")
def seen(dsn: str) -> dict[str, dict[str, Any]]:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), dsn], capture_output=True, text=True, timeout=45
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {row.pop("scenario"): row for row in rows}


def test_greenlets_share_the_connections_concurrently(seen: dict[str, dict[str, Any]]) -> None:
    """40 greenlets x 50 ms on 4 connections: 4 queries in flight at once (counted: elapsed
    time, 0.52-0.59 s against a serial 2 s on a quiet machine, proves nothing on a busy one)
    and no connection beyond maxconn."""
    figures = seen["concurrency"]
    assert figures["peak_in_flight"] == 4, figures
    assert figures["opened"] == 4


def test_a_waiting_greenlet_times_out_while_the_holder_still_runs(
    seen: dict[str, dict[str, Any]],
) -> None:
    figures = seen["timeout"]
    assert figures["raised"] == "PoolTimeout"
    assert figures["waited"] >= 0.1
    assert figures["holder_still_busy"], figures  # gave up at its deadline, not at the return


def test_maintenance_runs_as_a_greenlet_and_reaps(seen: dict[str, dict[str, Any]]) -> None:
    figures = seen["reaping"]
    assert figures["maintenance_is_greenlet"]
    assert (figures["idle_before"], figures["idle_after"], figures["reaped"]) == (4, 0, 4)


def test_the_watchdog_still_cuts_an_overrunning_query(seen: dict[str, dict[str, Any]]) -> None:
    figures = seen["watchdog"]
    # Cut by the alarm (disarm() says it fired), so pg_sleep(5) failed instead of ending.
    assert (figures["error"], figures["cut"]) == ("OperationalError", True), figures
    assert seen["watchdog_after"]["serves"] == 1  # the broken connection was replaced


def test_fork_gives_the_child_its_own_connections(seen: dict[str, dict[str, Any]]) -> None:
    figures = seen["fork"]
    assert figures["child_status"] == 0 and "child_error" not in figures, figures
    assert figures["child_backend"] != figures["parent_backend"]
    assert figures["parent_backend_after"] == figures["parent_backend"]  # untouched by the child

"""Fork: a pool created before os.fork() keeps working on both sides.

A psycopg2 connection is a socket to one server session. After fork() parent and child
share that socket; if the child closes its copy of the connection (explicitly, or by
garbage collection) libpq sends Terminate on it and the server ends the *parent's*
session. So the child must never use nor close the parent's connections, and must open
its own. Each test forks for real, lets the child report through a pipe, and always ends
the child with os._exit.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from faultsupport import (
    backend_pid,
    backend_pids,
    connector_threads,
    in_thread,
    pool_dsn,
    scalar,
    unique_app,
    wait_for,
)

import pgpool

CHILD_DEADLINE = 30.0


def run_in_child(body: Callable[[], Any]) -> Any:
    """Fork; run `body` in the child and return what it returned (JSON), or fail the test
    with the child's traceback. The child always ends with os._exit."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns that forking a multi-threaded process may deadlock the child;
        # that is the hazard under test, and the child only runs code we control.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            os.close(read_end)
            try:
                payload = {"ok": True, "result": body()}
                code = 0
            except BaseException:
                payload = {"ok": False, "error": traceback.format_exc()}
            os.write(write_end, json.dumps(payload).encode())
            os.close(write_end)
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + CHILD_DEADLINE
    try:
        while True:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([read_end], [], [], max(0.0, remaining))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"the child did not finish within {CHILD_DEADLINE} s")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        _, status = os.waitpid(pid, 0)
    report = json.loads(b"".join(chunks) or b"{}")
    assert report.get("ok"), f"the child failed:\n{report.get('error', report)}"
    assert os.waitstatus_to_exitcode(status) == 0
    return report["result"]


POOLS = [pgpool.ThreadedConnectionPool, pgpool.SimpleConnectionPool]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("cls", POOLS)
def test_child_gets_its_own_connections_and_parent_keeps_its(cls: type, dsn: str) -> None:
    app = unique_app("fork")
    with cls(2, 4, pool_dsn(dsn, app)) as pool:
        held = pool.getconn()
        idle = pool.getconn()
        pool.putconn(idle)  # one connection checked out, one idle, at the fork
        parent_pids = {backend_pid(held), backend_pid(idle)}

        def child() -> dict[str, Any]:
            conn = pool.getconn(timeout=10)
            assert conn is not held and conn is not idle
            server_pid = scalar(conn, "SELECT pg_backend_pid()")
            assert scalar(conn, "SELECT 1") == 1
            second = pool.getconn(timeout=10)  # the inherited idle one must not show up
            assert second is not idle
            second_pid = scalar(second, "SELECT pg_backend_pid()")
            pool.putconn(conn)
            pool.putconn(second)
            # The harshest thing a child can do with what it inherited: close it all.
            held.close()
            idle.close()
            pool.closeall()
            return {"pids": [server_pid, second_pid]}

        child_pids = set(run_in_child(child)["pids"])
        gc.collect()
        assert len(child_pids) == 2
        assert not child_pids & parent_pids, "the child was handed a parent's session"
        # The parent's sessions survived the child: same backends, still answering.
        assert scalar(held, "SELECT pg_backend_pid()") == backend_pid(held)
        again = pool.getconn()
        assert again is idle
        assert scalar(again, "SELECT 1") == 1
        assert parent_pids <= backend_pids(dsn, app)
        assert not child_pids & backend_pids(dsn, app)  # and the child's are gone
        pool.putconn(again)
        pool.putconn(held)


@pytest.mark.timeout(60)
def test_child_garbage_collecting_inherited_objects_spares_parent_sessions(dsn: str) -> None:
    """The child lets the pool and its connections be collected. (psycopg2 itself skips the
    Terminate when a connection is deallocated in another process than the one that opened
    it; an explicit close() has no such guard: see the test above.)"""
    app = unique_app("fork-gc")
    pool = pgpool.ThreadedConnectionPool(2, 3, pool_dsn(dsn, app), health_check_after=60)
    conns = [pool.getconn(), pool.getconn()]
    pids = [backend_pid(c) for c in conns]
    pool.putconn(conns[1])  # one checked out, one idle
    # Nothing but `holder` refers to the pool and its connections, in parent and child.
    holder: dict[str, Any] = {"pool": pool, "held": conns[0]}
    del pool, conns

    def child() -> None:
        holder.clear()  # the child's copies become garbage ...
        gc.collect()  # ... and are collected: the pool, its idle and its checked-out one

    try:
        run_in_child(child)
        pool, held = holder["pool"], holder["held"]
        assert scalar(held, "SELECT pg_backend_pid()") == pids[0]
        idle = pool.getconn()
        assert scalar(idle, "SELECT pg_backend_pid()") == pids[1]
        assert set(pids) <= backend_pids(dsn, app)
        pool.putconn(idle)
        assert pool.stats().failed_checks == 0
    finally:
        holder["pool"].putconn(holder["held"])
        holder["pool"].closeall()


@pytest.mark.timeout(60)
def test_child_can_use_a_pool_a_parent_thread_was_waiting_on(dsn: str) -> None:
    """At the fork a parent thread is queued in getconn: the child starts with a fresh lock
    and fresh bookkeeping, so it neither deadlocks nor sees the parent's queue."""
    app = unique_app("fork-wait")
    with pgpool.ThreadedConnectionPool(1, 1, pool_dsn(dsn, app), timeout=20) as pool:
        held = pool.getconn()
        waiter, outcome = in_thread(pool.getconn, "parent-waiter")
        wait_for(lambda: pool.stats().waiting == 1, what="parent thread queued")

        def child() -> dict[str, Any]:
            stats = pool.stats()
            assert stats.waiting == 0 and stats.in_use == 0, stats
            conn = pool.getconn(timeout=5)
            pid = scalar(conn, "SELECT pg_backend_pid()")
            pool.putconn(conn)
            return {"pid": pid}

        child_pid = run_in_child(child)["pid"]
        assert child_pid != backend_pid(held)
        pool.putconn(held)
        waiter.join(10)
        assert outcome.result is held
        assert scalar(held, "SELECT 1") == 1
        pool.putconn(held)


@pytest.mark.timeout(60)
def test_child_pool_has_its_own_maintenance(dsn: str) -> None:
    app = unique_app("fork-maint")
    with pgpool.ThreadedConnectionPool(2, 3, pool_dsn(dsn, app), maintenance_interval=0.1) as pool:
        assert len(connector_threads()) >= 1

        def child() -> dict[str, Any]:
            name = f"pgpool-connector-{pool.name}"
            mine = [t for t in connector_threads() if t.name == name]
            assert mine and all(t.is_alive() for t in mine), "no maintenance in the child"
            # Maintenance refills the child's pool to minconn with its own sessions.
            wait_for(lambda: pool.stats().idle >= 2, 10, "child pool refilled")
            conns = [pool.getconn(timeout=5) for _ in range(2)]
            pids = [scalar(c, "SELECT pg_backend_pid()") for c in conns]
            for c in conns:
                pool.putconn(c)
            pool.closeall()
            return {"pids": pids, "threads": threading.active_count()}

        held = [pool.getconn(), pool.getconn()]  # both checked out across the fork
        parent = {backend_pid(c) for c in held}
        result = run_in_child(child)
        assert not set(result["pids"]) & parent
        assert parent <= backend_pids(dsn, app)
        for conn in held:
            assert scalar(conn, "SELECT 1") == 1
            pool.putconn(conn)


@pytest.mark.timeout(60)
def test_a_pool_made_unopened_before_fork_is_opened_in_the_child(dsn: str) -> None:
    """The pre-fork recipe psycopg_pool users know: the master makes the pool with
    `open=False` (no connection, no thread to inherit) and each worker calls `open()`,
    as a gunicorn `post_fork` hook would."""
    app = unique_app("fork-open")
    pool = pgpool.ThreadedConnectionPool(2, 3, pool_dsn(dsn, app), open=False)
    name = f"pgpool-connector-{pool.name}"
    assert not [t for t in connector_threads() if t.name == name]

    def child() -> dict[str, Any]:
        pool.open(wait=True, timeout=10)
        assert [t for t in connector_threads() if t.name == name], "no connector in the child"
        with pool.connection() as conn:
            pid = scalar(conn, "SELECT pg_backend_pid()")
        sessions = sorted(backend_pids(dsn, app))
        pool.closeall()
        return {"pid": pid, "sessions": sessions}

    result = run_in_child(child)
    assert len(result["sessions"]) == 2 and result["pid"] in result["sessions"]
    # The master still holds nothing, and can itself be opened later (or never).
    assert pool.stats().size == 0
    wait_for(lambda: not backend_pids(dsn, app), 10, "the child's sessions ended")
    pool.open(wait=True, timeout=10)
    assert len(backend_pids(dsn, app)) == 2
    pool.closeall()

"""Exit: a program that forgets closeall() still exits, promptly and quietly.

Each test runs a small program in a subprocess and requires return code 0 within a
generous timeout, and nothing on stderr (no "Exception ignored in ...", no traceback from a
background thread at shutdown). The maintenance thread is a daemon holding only a weak
reference to its pool, so neither interpreter exit nor a forgotten pool waits for it.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from faultsupport import connector_threads, kill_backends, pool_dsn, unique_app, wait_for

import pgpool
from testbed.proxy import TcpProxy

REPO = Path(__file__).resolve().parent.parent
EXIT_TIMEOUT = 30.0  # generous: these programs need well under a second


def _start(program: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PGPASSWORD", None)
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(program), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


def _finish(proc: subprocess.Popen[str], stdin: str = "", timeout: float = EXIT_TIMEOUT) -> str:
    """The property under test: the program exits with 0 within `timeout`, silently."""
    try:
        out, err = proc.communicate(stdin, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the program did not exit within {timeout} s\n{out}\n{err}")
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{out}\n{err}"
    assert err == "", f"the program wrote to stderr:\n{err}"
    return out


def _run(program: str, *args: str, timeout: float = EXIT_TIMEOUT) -> str:
    return _finish(_start(program, *args), timeout=timeout)


@pytest.mark.timeout(60)
def test_exit_without_closeall(dsn: str) -> None:
    out = _run(
        """
        import sys, threading, pgpool
        pool = pgpool.ThreadedConnectionPool(2, 4, sys.argv[1], maintenance_interval=0.05)
        conn = pool.getconn()
        conn.cursor().execute("SELECT 1")
        pool.putconn(conn)
        print(sorted(t.name.split("-")[1] for t in threading.enumerate() if t.daemon))
        """,
        dsn,
    )
    assert "connector" in out  # the thread was running when the program ended


@pytest.mark.timeout(60)
def test_exit_with_a_connection_still_checked_out(dsn: str) -> None:
    _run(
        """
        import sys, pgpool
        pool = pgpool.ThreadedConnectionPool(1, 2, sys.argv[1], maintenance_interval=0.05)
        held = pool.getconn()
        held.cursor().execute("SELECT 1")  # and a transaction left open
        """,
        dsn,
    )


@pytest.mark.timeout(60)
def test_exit_while_the_server_is_down_and_maintenance_retries(dsn: str) -> None:
    _run(
        """
        import socket, time, pgpool
        probe = socket.socket(); probe.bind(("127.0.0.1", 0)); port = probe.getsockname()[1]
        probe.close()  # nothing listens there: every refill fails, maintenance backs off
        dsn = f"host=127.0.0.1 port={port} user=postgres connect_timeout=2"
        pool = pgpool.ThreadedConnectionPool(0, 2, dsn, maintenance_interval=0.01)
        time.sleep(0.3)  # minconn 0: the pool starts fine while the server is down
        """
    )


@pytest.mark.timeout(90)
def test_exit_while_maintenance_is_stuck_in_a_connect(tcp_proxy: TcpProxy, dsn: str) -> None:
    """The maintenance thread is in the middle of a connect that would take 60 s (a black
    hole with connect_timeout=60) when the program ends: exit does not wait for it."""
    proc = _start(
        """
        import sys, time, pgpool
        pool = pgpool.ThreadedConnectionPool(
            2, 3, sys.argv[1], maintenance_interval=0.05, health_check_after=60
        )
        print("ready", flush=True)
        sys.stdin.readline()  # the parent black-holes the proxy meanwhile
        for conn in [pool.getconn(), pool.getconn()]:
            pool.putconn(conn, close=True)  # below minconn: maintenance reconnects ...
        deadline = time.monotonic() + 10
        while pool.stats().connecting == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        print("connecting", pool.stats().connecting, flush=True)  # ... and is stuck there
        """,
        pool_dsn(tcp_proxy.dsn_for(dsn), unique_app("exit"), connect_timeout=60),
    )
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    tcp_proxy.blackhole()
    out = _finish(proc, "go\n")
    assert "connecting 1" in out or "connecting 2" in out, out


@pytest.mark.timeout(90)
def test_exit_with_dbhelper_while_a_daemon_thread_runs_a_query(dsn: str) -> None:
    """DBHelper closes its pool at exit. A daemon thread still in a long query then holds
    its connection: exit must not wait for that query (120 s) to finish."""
    app = unique_app("exit-helper")
    try:
        _run(
            """
        import os, sys, threading, time
        os.environ["PGPOOL_DSN"] = sys.argv[1]
        from pgpool.helpers import db_helper
        started = threading.Event()
        def work():
            with db_helper.get_resource() as (cursor, _conn):
                started.set()
                cursor.execute("SELECT pg_sleep(120)")
        threading.Thread(target=work, daemon=True).start()
        started.wait(10)
        time.sleep(0.2)  # the query is running
        """,
            pool_dsn(dsn, app),
            timeout=15,  # generous for an exit, and far shorter than the query
        )
    finally:
        kill_backends(dsn, app)  # a killed program leaves its query running on the server


@pytest.mark.timeout(60)
def test_exit_with_dbhelper_idle(dsn: str) -> None:
    out = _run(
        """
        import os, sys
        os.environ["PGPOOL_DSN"] = sys.argv[1]
        from pgpool.helpers import db_helper
        with db_helper.get_resource() as (cursor, _conn):
            cursor.execute("SELECT 42 AS answer")
            print(cursor.fetchone()["answer"])
        """,
        dsn,
    )
    assert out.strip() == "42"


@pytest.mark.timeout(60)
def test_a_forgotten_pool_takes_its_maintenance_thread_with_it(dsn: str) -> None:
    pool = pgpool.ThreadedConnectionPool(
        1, 2, pool_dsn(dsn, unique_app("forgotten")), maintenance_interval=0.05
    )
    name = f"pgpool-connector-{pool.name}"
    assert any(t.name == name for t in connector_threads())
    del pool
    gc.collect()
    wait_for(lambda: all(t.name != name for t in connector_threads()), 10, "thread ends")


@pytest.mark.timeout(60)
def test_closeall_ends_the_maintenance_thread(dsn: str) -> None:
    pool = pgpool.ThreadedConnectionPool(
        1, 2, pool_dsn(dsn, unique_app("closed")), maintenance_interval=60
    )
    name = f"pgpool-connector-{pool.name}"
    pool.closeall()
    wait_for(lambda: all(t.name != name for t in connector_threads()), 10, "thread ends")

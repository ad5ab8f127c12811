"""EmbeddedPostgres: the throwaway server every other test stands on."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg2
import pytest

import testbed.embedded as embedded
from testbed.embedded import EmbeddedPostgres

REPO = Path(__file__).resolve().parent.parent


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _refused(port: int) -> bool:
    """True if nothing listens on 127.0.0.1:`port`."""
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_start_gives_a_tuned_tcp_server(restartable_server: EmbeddedPostgres) -> None:
    pg = restartable_server
    assert pg.running
    assert pg.host == "127.0.0.1"
    assert pg.dsn == f"host=127.0.0.1 port={pg.port} dbname=postgres user=postgres"
    settings = pg.execute(
        "SELECT current_setting('max_connections'), current_setting('fsync'),"
        " current_setting('listen_addresses'), current_setting('server_encoding'), current_user"
    )
    assert settings == [("50", "off", "127.0.0.1", "UTF8", "postgres")]
    conn = psycopg2.connect(pg.dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
    finally:
        conn.close()


def test_execute_returns_rows_or_none(restartable_server: EmbeddedPostgres) -> None:
    pg = restartable_server
    assert pg.execute("CREATE TABLE t (x int)") is None
    assert pg.execute("INSERT INTO t VALUES (%s), (%s)", (1, 2)) is None
    assert pg.execute("SELECT x FROM t ORDER BY x") == [(1,), (2,)]
    assert pg.execute("SELECT %(a)s::int", {"a": 7}) == [(7,)]
    with pytest.raises(psycopg2.errors.UndefinedTable):
        pg.execute("SELECT * FROM missing")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_restart_keeps_port_and_data_and_breaks_sessions(
    restartable_server: EmbeddedPostgres, mode: embedded.StopMode
) -> None:
    pg = restartable_server
    port = pg.port
    pg.execute("CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
    conn = psycopg2.connect(pg.dsn)
    try:
        pg.restart(mode=mode)
        assert pg.running
        assert pg.port == port
        assert pg.execute("SELECT x FROM kept") == [(42,)]
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        conn.close()


def test_stop_and_start_again(restartable_server: EmbeddedPostgres) -> None:
    pg = restartable_server
    pg.stop(mode="smart")  # no clients, so smart does not wait
    assert not pg.running
    assert _refused(pg.port)
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(pg.dsn, connect_timeout=2).close()
    pg.stop()  # stopping a stopped server is a no-op
    pg.start()
    assert pg.execute("SELECT 1") == [(1,)]


def test_start_after_a_hard_crash(restartable_server: EmbeddedPostgres) -> None:
    pg = restartable_server
    pg.execute("CREATE TABLE survivor (x int); INSERT INTO survivor VALUES (1)")
    assert pg.pid is not None
    os.kill(pg.pid, signal.SIGKILL)
    _wait_for(lambda: not pg.running)
    assert pg.pid is None
    pg.start()  # the stale pid file must not block it; crash recovery replays the WAL
    assert pg.execute("SELECT x FROM survivor") == [(1,)]


def test_close_removes_directory_and_is_idempotent() -> None:
    pg = EmbeddedPostgres()
    with pytest.raises(RuntimeError, match="start"):
        _ = pg.port  # not picked yet
    pg.start()
    directory, port = pg.directory, pg.port
    assert directory is not None
    assert (directory / "data" / "PG_VERSION").exists()
    assert (directory / "postgres.log").exists()
    pg.close()
    assert not pg.running
    assert not directory.exists()
    assert _refused(port)
    pg.close()
    with pytest.raises(RuntimeError, match="closed"):
        pg.start()


def test_context_manager_and_explicit_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with EmbeddedPostgres(max_connections=10, port=port) as pg:
        assert pg.port == port
        assert pg.execute("SHOW max_connections") == [("10",)]
    assert not pg.running
    assert pg.directory is not None and not pg.directory.exists()


def test_taken_explicit_port_fails_with_the_server_log() -> None:
    with socket.create_server(("127.0.0.1", 0)) as squatter:
        pg = EmbeddedPostgres(port=squatter.getsockname()[1])
        try:
            with pytest.raises(RuntimeError, match="already in use"):
                pg.start()  # an explicit port is never silently replaced
            assert not pg.running
        finally:
            pg.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root needs the service user")
def test_root_runs_server_as_service_user(restartable_server: EmbeddedPostgres) -> None:
    assert restartable_server.directory is not None
    data = restartable_server.directory / "data"
    assert pwd.getpwuid(data.stat().st_uid).pw_name == embedded.SERVICE_USER


def test_exit_without_close_stops_server(tmp_path: Path) -> None:
    """The atexit hook: a test process that never calls close() leaves nothing behind."""
    script = (
        "from testbed.embedded import EmbeddedPostgres\n"
        "pg = EmbeddedPostgres().start()\n"
        "print(pg.directory, pg.port, flush=True)\n"
        "raise SystemExit('crash')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 1, done.stderr
    directory, port = done.stdout.split()
    assert not Path(directory).exists()
    assert _refused(int(port))


def test_missing_binaries_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "access", lambda *_args: False)
    with pytest.raises(RuntimeError, match="pip install pgserver"):
        embedded.find_bindir()


@pytest.mark.timeout(120)
@pytest.mark.skipif(bool(os.environ.get("PGPOOL_TEST_DSN")), reason="uses the embedded server")
def test_python_m_testbed_embedded_serves_until_ctrl_c() -> None:
    """The README's server for experiments: it prints a DSN that works, and Ctrl-C stops it,
    taking its data directory with it."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "testbed.embedded"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("PostgreSQL is running: "), first + proc.stderr.read()
        dsn = first.partition(": ")[2].strip()
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")
            assert cur.fetchone() == (1,)
        conn.close()
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert out.strip().endswith("stopped")
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(dsn, connect_timeout=2).close()

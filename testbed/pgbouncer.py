"""A throwaway PgBouncer in front of a PostgreSQL server, for tests and the fleet benchmark.

`PgBouncer` writes a config into a fresh temporary directory, runs ``pgbouncer`` in the
foreground as a child process listening on 127.0.0.1 at a free port, and deletes
everything on `close()`::

    with EmbeddedPostgres() as pg, PgBouncer(pg.host, pg.port, pool_mode="transaction") as pgb:
        conn = psycopg2.connect(pgb.dsn)          # to PostgreSQL, through PgBouncer
        pgb.admin("SHOW POOLS")                  # the admin console

Authentication is ``trust`` on both sides (the embedded server trusts loopback), so no
password is ever written anywhere. PgBouncer refuses to run as root: when this process is
root, PgBouncer runs as the embedded server's system user ``pgpool`` (created if missing),
which owns the temporary directory.

The binary comes from the system package (``apt-get install pgbouncer``); `find_pgbouncer`
returns None when it is missing, and `MISSING` says how to get it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import psycopg2

from testbed.embedded import SERVICE_USER, _add_mode, _free_port, _service_user

__all__ = ["MISSING", "PgBouncer", "PoolMode", "find_pgbouncer"]

PoolMode = Literal["session", "transaction", "statement"]

MISSING = (
    "pgbouncer is not installed: `bash scripts/test.sh` installs it with apt-get when run as "
    "root; otherwise install it yourself (e.g. `sudo apt-get install pgbouncer`)"
)


def find_pgbouncer() -> Path | None:
    """The pgbouncer binary (on PATH, or Debian's /usr/sbin), or None."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    return None if found is None else Path(found)


class PgBouncer:
    """A private PgBouncer for one upstream server; see the module docstring.

    `database` is the name clients use and PgBouncer forwards unchanged; `users` are the
    roles clients may log in as (trusted, like the embedded server). Settings that the
    tests turn (`default_pool_size`, `query_wait_timeout`, ...) are constructor arguments;
    `extra` adds any other ``[pgbouncer]`` setting. The port is kept across `restart()`.
    """

    host = "127.0.0.1"

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        pool_mode: PoolMode = "transaction",
        database: str = "postgres",
        default_pool_size: int = 20,
        max_client_conn: int = 200,
        query_wait_timeout: float = 120,
        server_reset_query: str = "DISCARD ALL",
        users: Sequence[str] = ("postgres",),
        extra: Mapping[str, str | int | float] | None = None,
    ) -> None:
        binary = find_pgbouncer()
        if binary is None:
            raise RuntimeError(MISSING)
        self._binary = binary
        self.pool_mode = pool_mode
        self.database = database
        self.default_pool_size = default_pool_size
        # Trust auth still wants each user listed; postgres is the admin console's.
        self._users = sorted({"postgres", *users})
        self._settings: dict[str, str | int | float] = {
            "listen_addr": self.host,
            "auth_type": "trust",
            "admin_users": "postgres",
            "stats_users": "postgres",
            "pool_mode": pool_mode,
            "default_pool_size": default_pool_size,
            "max_client_conn": max_client_conn,
            "query_wait_timeout": query_wait_timeout,
            "server_reset_query": server_reset_query,
            # Quick reconnects after a server outage: the tests restart servers on purpose.
            "server_login_retry": 1,
            "server_connect_timeout": 5,
            "ignore_startup_parameters": "extra_float_digits",
            "log_connections": 0,
            "log_disconnections": 0,
            **(extra or {}),
        }
        self._upstream = (upstream_host, upstream_port)
        self._port: int | None = None
        self._port_settled = False
        self._process: subprocess.Popen[bytes] | None = None
        self._user = SERVICE_USER if os.geteuid() == 0 else None
        self.directory: Path | None = None
        self._closed = False

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the port is picked by start(); call it first")
        return self._port

    @property
    def dsn(self) -> str:
        """A DSN for clients: the upstream database, through PgBouncer, as ``postgres``."""
        return f"host={self.host} port={self.port} dbname={self.database} user=postgres"

    @property
    def admin_dsn(self) -> str:
        """The admin console (``SHOW POOLS``, ``PAUSE``, ``RECONNECT``...)."""
        return f"host={self.host} port={self.port} dbname=pgbouncer user=postgres"

    @property
    def log_file(self) -> Path | None:
        return None if self.directory is None else self.directory / "pgbouncer.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> PgBouncer:
        """Start PgBouncer; return once it accepts connections on its admin console."""
        if self._closed:
            raise RuntimeError("PgBouncer is closed")
        if self.running:
            return self
        if self.directory is None:
            self._setup()
        for _attempt in range(5):
            if self._port is None:
                self._port = _free_port()
            self._write_config()
            self._process = subprocess.Popen(
                [str(self._binary), str(self._config)],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,  # everything goes to log_file as well
                user=self._user,
                group=self._user,
                extra_groups=[] if self._user else None,
                start_new_session=True,  # a Ctrl-C meant for pytest is not PgBouncer's
            )
            if self._wait_accepting():
                self._port_settled = True  # from now on restart() keeps this port
                return self
            self._kill()  # exited on its own (port taken?) or never answered
            if "in use" in self._log_tail() and not self._port_settled:
                self._port = None  # someone took the port between pick and bind: re-pick
                continue
            break
        raise RuntimeError(f"pgbouncer did not start:\n{self._log_tail()}")

    def stop(self) -> None:
        """Stop PgBouncer at once (SIGTERM: every client and server connection is dropped)."""
        process = self._process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                self._kill()
        self._process = None

    def restart(self) -> None:
        """Stop, then start on the same port: every client sees its connection broken."""
        self.stop()
        self.start()

    def admin(self, command: str) -> list[tuple[Any, ...]] | None:
        """Run one admin console command (``SHOW POOLS``, ``PAUSE``...); return its rows."""
        with self._console() as cur:
            cur.execute(command)
            return cur.fetchall() if cur.description is not None else None

    def admin_dicts(self, command: str) -> list[dict[str, Any]]:
        """`admin`, with each row as a dict keyed by column name (``SHOW POOLS`` has ~15)."""
        with self._console() as cur:
            cur.execute(command)
            names = [column.name for column in cur.description or ()]
            return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]

    def pool_row(self) -> dict[str, Any]:
        """This database's row of ``SHOW POOLS`` (cl_active, cl_waiting, sv_active, ...)."""
        for row in self.admin_dicts("SHOW POOLS"):
            if row["database"] == self.database:
                return row
        return {}

    def close(self) -> None:
        """Stop PgBouncer and delete its directory. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "closed" if self._closed else "stopped"
        return f"<PgBouncer {self.host}:{self._port} {self.pool_mode} mode, {state}>"

    # -- internals --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _console(self) -> Iterator[Any]:
        """A cursor on a fresh admin console connection, closed afterwards."""
        conn = psycopg2.connect(self.admin_dsn, connect_timeout=5)
        try:
            conn.autocommit = True  # the console knows no transactions
            with conn.cursor() as cur:
                yield cur
        finally:
            conn.close()

    @property
    def _config(self) -> Path:
        assert self.directory is not None
        return self.directory / "pgbouncer.ini"

    def _setup(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="pgpool-pgbouncer-"))
        self.directory = directory
        (directory / "userlist.txt").write_text("".join(f'"{u}" ""\n' for u in self._users))
        if self._user is not None:
            user = _service_user()
            for parent in directory.parents:  # the service user must reach its own dir
                _add_mode(parent, 0o001, [])
            for path in (directory, directory / "userlist.txt"):
                os.chown(path, user.pw_uid, user.pw_gid)

    def _write_config(self) -> None:
        assert self.directory is not None
        host, port = self._upstream
        lines = [
            "[databases]",
            f"{self.database} = host={host} port={port} dbname={self.database}",
            "[pgbouncer]",
            f"listen_port = {self.port}",
            f"unix_socket_dir = {self.directory}",
            f"auth_file = {self.directory / 'userlist.txt'}",
            f"logfile = {self.log_file}",
            f"pidfile = {self.directory / 'pgbouncer.pid'}",
            *(f"{key} = {value}" for key, value in self._settings.items()),
        ]
        self._config.write_text("\n".join(lines) + "\n")
        if self._user is not None:
            user = _service_user()
            os.chown(self._config, user.pw_uid, user.pw_gid)

    def _kill(self) -> None:
        """SIGKILL the process if it still runs, and reap it."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        if self._process is not None:
            self._process.wait(10)

    def _wait_accepting(self, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False
            with contextlib.suppress(psycopg2.Error):
                self.admin("SHOW VERSION")
                return True
            time.sleep(0.05)
        return False

    def _log_tail(self) -> str:
        log = self.log_file
        if log is None or not log.exists():
            return ""
        return log.read_text(errors="replace")[-3000:]

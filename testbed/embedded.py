"""A throwaway PostgreSQL server for tests, benchmarks and demos.

`EmbeddedPostgres` runs a private cluster in a fresh temporary directory, listening on
127.0.0.1 at a free TCP port, tuned for speed rather than durability (fsync off), and
deletes everything on `close()`::

    with EmbeddedPostgres() as pg:
        conn = psycopg2.connect(pg.dsn)

The binaries come from the `pgserver` wheel when it is installed (``pip install pgserver``),
else from a system install (``initdb``/``pg_ctl`` on PATH, or Debian's
``/usr/lib/postgresql/<version>/bin``). Only pgserver's *binaries* are used: its own server
management listens on a unix socket only, and a pool is tested over TCP.

PostgreSQL refuses to run as root. When this process is root, the server runs as a system
user ``pgpool`` (created on first use) that owns the data directory; the installation and
its parent directories are made world-readable/traversable where they are not already.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import psycopg2

__all__ = ["EmbeddedPostgres", "StopMode", "find_bindir", "run_sql"]

StopMode = Literal["smart", "fast", "immediate"]

SERVICE_USER = "pgpool"
_REQUIRED = ("initdb", "pg_ctl", "postgres")
_RX = stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH
_opened_up: set[Path] = set()  # installations already made usable by SERVICE_USER
# Trust auth: loopback only, throwaway data. --no-sync: nothing to protect, saves seconds.
# The C locale works with any encoding and sorts the same on every host.
_INITDB_ARGS = ("--auth=trust", "-U", "postgres", "--encoding=UTF8", "--locale=C", "--no-sync")
_SETTINGS = """
# Added by testbed.embedded. Crash safety against power loss is pointless for a throwaway
# cluster: no fsync makes writes, checkpoints and shutdown cheap. synchronous_commit stays
# on: with fsync off it costs one write(2) per commit, and it keeps every acknowledged
# commit across `restart("immediate")` (a simulated crash). shared_buffers is small:
# several of these servers may run at once.
listen_addresses = '127.0.0.1'
unix_socket_directories = '{sock_dir}'
max_connections = {max_conn}
fsync = off
synchronous_commit = on
full_page_writes = off
shared_buffers = 32MB
"""


def find_bindir() -> Path:
    """Return a directory with ``initdb``, ``pg_ctl`` and ``postgres``, or say what to install."""
    candidates: list[Path] = []
    # find_spec locates the wheel without importing it (its import pulls in psutil & co).
    spec = importlib.util.find_spec("pgserver")
    if spec is not None and spec.origin is not None:
        candidates.append(Path(spec.origin).parent / "pginstall" / "bin")
    on_path = shutil.which("initdb")
    if on_path is not None:
        # Debian's /usr/bin/initdb is a wrapper symlink; the real tools sit next to its target.
        candidates.append(Path(on_path).resolve().parent)
    debian = Path("/usr/lib/postgresql").glob("*/bin")  # newest major version first
    candidates += sorted(debian, key=lambda p: p.parent.name.zfill(4), reverse=True)
    for bindir in candidates:
        if all(os.access(bindir / tool, os.X_OK) for tool in _REQUIRED):
            return bindir
    raise RuntimeError(
        "No PostgreSQL server binaries found (need initdb, pg_ctl, postgres). "
        "Install them with `pip install pgserver`, or `apt-get install postgresql`."
    )


ADMIN_LOCK_TIMEOUT_MS = 5_000  # run_sql waits at most this long for a lock
ADMIN_STATEMENT_TIMEOUT_MS = 60_000  # and this long for any statement


def run_sql(
    dsn: str, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
) -> list[tuple[Any, ...]] | None:
    """Run one statement on a short-lived autocommit connection; return its rows, or None.

    Meant for admin actions in tests (``pg_terminate_backend``, ``CREATE TABLE``...), not
    for load: every call pays for a full connect.

    Every admin statement is short, so it gets bounded waits (`ADMIN_LOCK_TIMEOUT_MS`,
    `ADMIN_STATEMENT_TIMEOUT_MS`): a lock it waits for is almost always held by a
    connection that a failing test left in a transaction, and a test's teardown that waits
    for it must fail within seconds (SQLSTATE 55P03, lock_not_available), not hang the
    suite. No Python timeout could do this: libpq's wait cannot be interrupted by a signal.
    The timeouts travel as the `options` startup parameter, which PgBouncer refuses unless
    it is in its `ignore_startup_parameters`: point run_sql at the server itself.
    """
    conn = psycopg2.connect(
        dsn,
        connect_timeout=10,
        application_name="pgpool-admin",
        options=f"-c lock_timeout={ADMIN_LOCK_TIMEOUT_MS} "
        f"-c statement_timeout={ADMIN_STATEMENT_TIMEOUT_MS}",
    )
    try:
        conn.autocommit = True  # no lingering transaction, and statements like VACUUM work
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description is not None else None
    finally:
        conn.close()


def _add_mode(path: Path, bits: int, changed: list[Path]) -> None:
    mode = path.stat().st_mode
    if mode & bits != bits:  # only touch what lacks the bits: system installs stay untouched
        path.chmod(mode | bits)
        changed.append(path)


def _announce(message: str) -> None:
    """Say what the embedded server changes on this machine outside its temp dir."""
    print(f"testbed.embedded: {message}", file=sys.stderr, flush=True)


def _open_up(bindir: Path) -> None:
    """Let SERVICE_USER traverse to, read and run the installation (like pgserver does)."""
    prefix = bindir.parent  # holds bin/, lib/ and (for pgserver) share/
    if prefix in _opened_up:
        return
    trees = [prefix]
    changed: list[Path] = []
    libs = prefix.parent.parent / "pgserver.libs"  # auditwheel's vendored libpq for initdb
    if libs.is_dir():
        trees.append(libs)
    for tree in trees:
        for parent in tree.parents:  # traversal (x) is all a parent needs: no listing
            _add_mode(parent, stat.S_IXGRP | stat.S_IXOTH, changed)
        for root, _dirs, files in os.walk(tree):
            _add_mode(Path(root), _RX, changed)
            for name in files:
                file = Path(root) / name
                owner_x = file.stat().st_mode & stat.S_IXUSR
                _add_mode(file, stat.S_IRGRP | stat.S_IROTH | (_RX if owner_x else 0), changed)
    if changed:
        _announce(
            f"made {len(changed)} files and directories of {prefix} readable by {SERVICE_USER!r} "
            "(group/other read and traverse bits), so that it can run the server"
        )
    _opened_up.add(prefix)


def _service_user() -> pwd.struct_passwd:
    """Return SERVICE_USER's passwd entry, creating the system user if it is missing."""
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(SERVICE_USER)
    _announce(
        f"running as root, and PostgreSQL refuses to: creating the system user {SERVICE_USER!r} "
        "to run the embedded server (no home, no login shell)"
    )
    cmd = ["useradd", "--system", "--no-create-home", "--user-group"]
    cmd += ["--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", SERVICE_USER]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:  # a concurrent process may have won the race: what matters is that the user exists
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        raise RuntimeError(f"could not create user {SERVICE_USER!r}: {done.stderr}") from None


def _free_port() -> int:
    # The kernel hands out an unused port; a tiny race remains, so start() retries on clash.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class EmbeddedPostgres:
    """A private PostgreSQL server in a temp dir; see the module docstring.

    The port is picked by the first `start()` (unless given) and kept across `restart()`,
    so DSNs held by a pool stay valid while the server bounces.
    """

    host = "127.0.0.1"

    def __init__(self, max_connections: int = 200, port: int | None = None) -> None:
        self.max_connections = max_connections
        self._port = port
        self._port_settled = port is not None  # an explicit port is never re-picked
        self._bindir = find_bindir()  # fail at construction, with the install hint
        self._as_root = os.geteuid() == 0
        self._user: str | None = SERVICE_USER if self._as_root else None
        self.directory: Path | None = None  # temp dir: data/, postgres.log, unix socket
        self._closed = False

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the port is picked by start(); call it first")
        return self._port

    @property
    def dsn(self) -> str:
        """A key=value DSN for the superuser ``postgres`` (trust auth: no password)."""
        return f"host={self.host} port={self.port} dbname=postgres user=postgres"

    @property
    def log_file(self) -> Path | None:
        return None if self.directory is None else self.directory / "postgres.log"

    @property
    def running(self) -> bool:
        """Whether the postmaster is alive (checked live, so a killed server reads False)."""
        return self.pid is not None

    @property
    def pid(self) -> int | None:
        """The live postmaster's pid (``os.kill(pg.pid, SIGKILL)`` simulates a crash)."""
        try:
            pid_file = (self.directory or Path("/nonexistent")) / "data" / "postmaster.pid"
            pid = int(pid_file.read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        # pg_ctl daemonizes the postmaster, and a container's init may never reap it: a
        # killed postmaster can linger as a zombie that kill(pid, 0) still finds.
        with contextlib.suppress(OSError, IndexError):
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return None
        return pid

    def start(self) -> EmbeddedPostgres:
        """Start the server (initialising the cluster on first use); return once it accepts."""
        if self._closed:
            raise RuntimeError("EmbeddedPostgres is closed")
        if self.running:
            return self
        if self.directory is None:
            self._initdb()
        assert self.directory is not None
        # A killed postmaster leaves its lock files; if a zombie holds their pid, postgres
        # would take them for a live server and refuse to start.
        for lock in [self.directory / "data" / "postmaster.pid", *self.directory.glob("*.lock")]:
            lock.unlink(missing_ok=True)
        for _attempt in range(5):
            if self._port is None:
                self._port = _free_port()
            try:
                self._pg_ctl("start", "-l", str(self.log_file), "-o", f"-p {self._port}")
            except RuntimeError as exc:
                if self._port_settled or "already in use" not in str(exc):
                    raise
                self._port = None  # someone grabbed the port between pick and bind: re-pick
                continue
            self._port_settled = True
            return self
        raise RuntimeError("could not find a free port for PostgreSQL")

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server if running. ``fast`` aborts sessions, ``immediate`` skips the
        shutdown checkpoint (like a crash), ``smart`` waits for clients to disconnect."""
        if self.running:
            self._pg_ctl("stop", "-m", mode)

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop then start again: same port, same data; existing connections are broken."""
        self.stop(mode)
        self.start()

    def close(self) -> None:
        """Stop the server and delete its directory. Idempotent; also runs at exit."""
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.close)
        if self.directory is None:
            return
        try:
            self.stop("immediate")  # the data is about to be deleted: skip the checkpoint
        except RuntimeError:
            if (pid := self.pid) is not None:  # last resort; orphaned backends exit alone
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)

    def execute(
        self, sql: str, params: Sequence[Any] | Mapping[str, Any] | None = None
    ) -> list[tuple[Any, ...]] | None:
        """Run one statement as ``postgres`` (see `run_sql`); return its rows, or None."""
        return run_sql(self.dsn, sql, params)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "closed" if self._closed else "stopped"
        return f"<EmbeddedPostgres {self.host}:{self._port} {state} dir={self.directory}>"

    def _initdb(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="pgpool-pg-"))
        self.directory = directory
        atexit.register(self.close)  # a failing test run must not leave a server behind
        if self._as_root:
            user = _service_user()
            _open_up(self._bindir)
            opened: list[Path] = []
            for parent in directory.parents:  # the service user must reach its own dir
                _add_mode(parent, stat.S_IXOTH, opened)
            if opened:
                _announce(f"made {', '.join(map(str, opened))} traversable by other users")
            os.chown(directory, user.pw_uid, user.pw_gid)
        data = directory / "data"
        self._run("initdb", "-D", str(data), *_INITDB_ARGS)
        settings = _SETTINGS.format(
            sock_dir=str(directory).replace("'", "''"), max_conn=self.max_connections
        )
        with (data / "postgresql.conf").open("a") as conf:  # later lines win over defaults
            conf.write(settings)

    def _pg_ctl(self, *args: str) -> None:
        assert self.directory is not None
        data = str(self.directory / "data")
        self._run("pg_ctl", *args, "-D", data, "-w", "-t", "60")

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self._bindir / tool), *args]
        done = subprocess.run(
            cmd,
            cwd=self.directory,  # readable by the service user, unlike root's cwd maybe
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
            user=self._user,
            group=self._user,
            extra_groups=[] if self._as_root else None,  # drop root's supplementary groups
        )
        if done.returncode != 0:  # the server log's tail usually says why
            log = self.log_file
            tail = log.read_text()[-3000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{tool} {' '.join(args)} failed:\n{done.stderr}{done.stdout}{tail}")


def main() -> None:
    """``.venv/bin/python -m testbed.embedded``: a server to experiment with, until Ctrl-C."""
    stop = {signal.SIGINT, signal.SIGTERM}
    with EmbeddedPostgres() as server:
        # Ctrl-C and TERM are taken synchronously, so a second one cannot cut the clean-up
        # short. Blocked only now: the server's processes must not inherit the mask.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        print(f"PostgreSQL is running: {server.dsn}", flush=True)
        print("Ctrl-C stops it and deletes its data.", flush=True)
        signal.sigwait(stop)
    print("stopped", flush=True)


if __name__ == "__main__":
    main()

"""The deployment recipes of docs/deploying.md, run for real.

Each test starts the real server process on loopback (Flask's threaded server, gunicorn
with gthread workers and ``preload_app``, or a multiprocessing pool) with the app from
examples/, drives real HTTP requests or tasks, and checks from outside what the recipe
promises: connections returned after failing views, one pool per process and no session
shared between processes (in ``pg_stat_activity`` and by which process owns each socket),
a killed worker replaced cleanly, a clean shutdown. The docs show the same files: a test
checks that they do, byte for byte.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import EXTERNAL_DSN, PgServer
from faultsupport import count_backends, unique_app, wait_for
from psycopg2.extensions import make_dsn

from testbed.embedded import run_sql

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DATABASE = "deploy_recipes"

pytest.importorskip("flask", reason="the deploy recipes need the test extra (flask)")


@pytest.fixture(scope="module")
def recipe_db(pg_server: PgServer) -> str:
    """DSN of a database with the `users` table the example app serves."""
    if EXTERNAL_DSN:
        pytest.skip("the recipes create a database of their own on the embedded server")
    if not run_sql(pg_server.dsn, "SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)):
        run_sql(pg_server.dsn, f"CREATE DATABASE {DATABASE}")
    dsn = make_dsn(pg_server.dsn, dbname=DATABASE)
    run_sql(dsn, "CREATE TABLE IF NOT EXISTS users (name text)")
    return dsn


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _http(method: str, url: str, timeout: float = 10) -> tuple[int, Any]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, None


def _wait_http(url: str, process: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"server exited: {process.communicate()[1][-2000:]}"
        try:
            _http("GET", url, timeout=2)
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {timeout} s")


def _hammer(url: str, threads: int, requests: int) -> list[Any]:
    """`threads` clients x `requests` GETs of `url`; return every JSON answer."""
    answers: list[Any] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            for _ in range(requests):
                status, body = _http("GET", url)
                assert status == 200, status
                with lock:
                    answers.append(body)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    return answers


def _env(dsn: str, app: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, PGPOOL_DSN=make_dsn(dsn, application_name=app), **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT prints every thread's stack (see _exits)
    return env


@contextlib.contextmanager
def _ctrl_c_reaches_children() -> Iterator[None]:
    """Let the processes started inside hear the Ctrl-C the test sends them.

    A program started in the background by a script (`cmd &`, without job control) ignores
    SIGINT, and its children inherit that across exec: the test's Ctrl-C would be lost and
    the server would run on (it did, in a `.ci/run` started that way). A handler, unlike an
    ignored signal, is reset to the default at exec, so the parent takes Python's own for
    the moment it starts them."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _exits(process: subprocess.Popen[str], timeout: float) -> str:
    """Wait for `process` to exit after its Ctrl-C; return its stderr. One that does not
    exit in time is aborted, and the test fails with where each of its threads was stuck
    (faulthandler's dump, from PYTHONFAULTHANDLER): a hang at exit names its cause."""
    try:
        return process.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)
        err = process.communicate(timeout=10)[1]
        pytest.fail(f"no exit {timeout:.0f} s after Ctrl-C; its threads:\n{err[-6000:]}")


@pytest.fixture
def stop_later() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes the test started: killed at the end if still running."""
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=10)


# -- /proc: who owns which socket ----------------------------------------------------------


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _local_ports_to(pid: int, server_port: int) -> set[int]:
    """Local ports of `pid`'s TCP connections to 127.0.0.1:`server_port`."""
    inodes = _socket_inodes(pid)
    ports = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if inode in inodes and int(remote.split(":")[1], 16) == server_port:
            ports.add(int(local.split(":")[1], 16))
    return ports


def _sessions(dsn: str, app: str) -> dict[int, int]:
    """backend pid -> client port of every session of `app`."""
    rows = run_sql(
        dsn, "SELECT pid, client_port FROM pg_stat_activity WHERE application_name = %s", (app,)
    )
    assert rows is not None
    return dict(rows)


# -- Flask, threaded --------------------------------------------------------------------------


def test_flask_threaded_returns_connections_even_when_the_view_raises(
    recipe_db: str, stop_later: list[subprocess.Popen[str]]
) -> None:
    app, port = unique_app("flask"), _free_port()
    cmd = [sys.executable, "-m", "flask", "--app", "examples.flask_app", "run"]
    cmd += ["--with-threads", "--host", "127.0.0.1", "--port", str(port)]
    with _ctrl_c_reaches_children():
        process = subprocess.Popen(
            cmd, cwd=ROOT, env=_env(recipe_db, app, POOL_MAX="4"), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
    stop_later.append(process)
    base = f"http://127.0.0.1:{port}"
    _wait_http(f"{base}/users", process)

    answers = _hammer(f"{base}/whoami", threads=8, requests=25)
    assert {a["pid"] for a in answers} == {process.pid}  # one process, one pool
    assert len({a["backend"] for a in answers}) <= 4  # never more sessions than maxconn

    assert _http("POST", f"{base}/users/ada")[0] == 201
    for _ in range(6):  # more failures than the pool has connections: none may leak
        assert _http("POST", f"{base}/users/ghost/fail")[0] == 500
    status, names = _http("GET", f"{base}/users")
    assert status == 200 and "ada" in names and "ghost" not in names  # rolled back
    status, me = _http("GET", f"{base}/whoami")
    assert me["in_use"] == 1  # this request's own connection: every other one came back
    assert count_backends(recipe_db, app) <= 4

    process.send_signal(signal.SIGINT)  # Ctrl-C
    err = _exits(process, 15)
    # The only tracebacks are the six failing views' own, logged by Flask: none at shutdown.
    assert err.count("Traceback") == err.count("RuntimeError: the view failed") == 6, err[-3000:]
    run_sql(recipe_db, "DELETE FROM users")


# -- gunicorn, gthread workers, preload_app ----------------------------------------------------


# The recipe's config plus two master-side hooks that record what the master holds: its
# Python threads, and whether the app module in it made a pool. gunicorn runs when_ready
# once the master is up, child_exit in the master each time a worker dies.
PROBE = """
exec(open({recipe!r}).read())

def _record(label):
    import json, sys, threading
    app = sys.modules.get("examples.flask_app")
    seen = {{"threads": [t.name for t in threading.enumerate()],
            "pool": None if app is None else repr(app._pool)}}
    with open({out!r}, "a") as out:
        out.write(json.dumps([label, seen]) + "\\n")

def when_ready(server):
    _record("ready")

def child_exit(server, worker):
    _record("child_exit")
"""


def test_gunicorn_preload_master_holds_nothing_workers_own_their_sessions(
    recipe_db: str, stop_later: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    pytest.importorskip("gunicorn", reason="the gunicorn recipe needs the test extra")
    if not Path("/proc/net/tcp").exists():
        pytest.skip("which process owns which socket is read from Linux's /proc")
    app, port = unique_app("gunicorn"), _free_port()
    server_port = int(dict(p.split("=") for p in recipe_db.split())["port"])
    record = tmp_path / "master.jsonl"
    probe = tmp_path / "probe.conf.py"
    probe.write_text(PROBE.format(recipe=str(EXAMPLES / "gunicorn.conf.py"), out=str(record)))
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(probe)]
    cmd += ["-b", f"127.0.0.1:{port}", "--threads", "4", "examples.flask_app:app"]
    master = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(recipe_db, app, POOL_MAX="4"), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    stop_later.append(master)
    base = f"http://127.0.0.1:{port}"
    _wait_http(f"{base}/whoami", master)
    wait_for(lambda: len(_children(master.pid)) == 2, 15, "two workers")
    workers = _children(master.pid)

    answers = _hammer(f"{base}/whoami", threads=8, requests=25)
    assert {a["pid"] for a in answers} <= workers

    # The master: the app is imported there (preload_app), yet no pool was made.
    assert _local_ports_to(master.pid, server_port) == set()  # no connection
    # Each session belongs to exactly one worker, and to the worker that reported it.
    sessions = _sessions(recipe_db, app)
    owner = {}
    for worker in workers:
        for client_port in _local_ports_to(worker, server_port):
            owner[client_port] = worker
    assert sessions and set(sessions.values()) <= set(owner)  # each socket is a worker's
    for answer in answers:
        if answer["backend"] in sessions:  # (a session may since have been reaped)
            assert owner[sessions[answer["backend"]]] == answer["pid"]

    # A killed worker: its sessions end, gunicorn starts another, requests go on.
    victim = next(iter(workers))
    victim_sessions = {b for b, p in sessions.items() if owner.get(p) == victim}
    os.kill(victim, signal.SIGKILL)
    wait_for(
        lambda: len(_children(master.pid) - {victim}) == 2 and victim not in _children(master.pid),
        15,
        "a replacement worker",
    )
    wait_for(lambda: not victim_sessions & set(_sessions(recipe_db, app)), 15, "its sessions end")
    answers = _hammer(f"{base}/whoami", threads=4, requests=10)
    assert victim not in {a["pid"] for a in answers}
    assert _local_ports_to(master.pid, server_port) == set()
    snapshots = [json.loads(line) for line in record.read_text().splitlines()]
    assert [label for label, _ in snapshots] == ["ready", "child_exit"]
    for _, seen in snapshots:
        assert seen["pool"] == "None"  # the app module in the master made no pool...
        assert not [t for t in seen["threads"] if t.startswith("pgpool")]  # ...nor thread

    # TERM: workers finish, close their pools (worker_exit), the master exits cleanly.
    master.send_signal(signal.SIGTERM)
    err = _exits(master, 30)
    assert master.returncode == 0, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    wait_for(lambda: count_backends(recipe_db, app) == 0, 10, "every session closed")


# -- a plain multiprocessing worker pool ---------------------------------------------------------


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_multiprocessing_workers_each_have_their_own_pool(recipe_db: str, method: str) -> None:
    import pgpool
    from examples.mp_workers import run

    app = unique_app(f"mp-{method}")
    dsn = make_dsn(recipe_db, application_name=app)
    # The parent uses a pool of its own before and after: fork must not share its session.
    with pgpool.ThreadedConnectionPool(1, 1, dsn) as parent_pool:
        with parent_pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            (parent_backend,) = cur.fetchone()
        results = run(dsn, method=method, processes=3, items=60)
        with parent_pool.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            assert cur.fetchone() == (parent_backend,)  # still its own, still alive
    assert sorted((n, doubled) for n, doubled, _, _ in results) == [(n, 2 * n) for n in range(60)]
    backends_of: dict[int, set[int]] = {}
    for _, _, worker, backend in results:
        backends_of.setdefault(worker, set()).add(backend)
    assert all(len(b) == 1 for b in backends_of.values())  # one connection per worker...
    all_backends = [next(iter(b)) for b in backends_of.values()]
    assert len(set(all_backends)) == len(all_backends)  # ...its own
    assert parent_backend not in all_backends
    wait_for(lambda: count_backends(recipe_db, app) == 0, 10, "workers closed their pools")


# -- the docs show these very files ---------------------------------------------------------------


@pytest.mark.parametrize("name", ["flask_app.py", "gunicorn.conf.py", "mp_workers.py"])
def test_docs_show_the_tested_recipe(name: str) -> None:
    page = (ROOT / "docs" / "deploying.md").read_text()
    source = (EXAMPLES / name).read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert source in blocks, f"docs/deploying.md does not show examples/{name} as it is"

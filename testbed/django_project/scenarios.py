"""Scenarios that tests/test_django.py runs, each in a fresh process of the Django venv.

``python scenarios.py NAME`` sets Django up (project/settings.py reads the server, the
databases and ``OPTIONS["pool"]`` from the environment), runs the scenario and prints
what it observed as one JSON line; the test asserts on it. Requests go through Django's
real ``WSGIHandler``, whose request_started/request_finished signals return the
connection (the test ``Client`` disconnects them).
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
SCENARIOS: dict[str, Callable[[], dict[str, Any]]] = {}


def scenario(function: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    SCENARIOS[function.__name__] = function
    return function


def request(path: str, query: str = "") -> tuple[int, bytes]:
    """One request through a WSGIHandler, as a WSGI server's worker thread makes it."""
    from django.core.handlers.wsgi import WSGIHandler

    status: list[str] = []
    environ = {
        "REQUEST_METHOD": "GET", "PATH_INFO": path, "QUERY_STRING": query,
        "SERVER_NAME": "testserver", "SERVER_PORT": "80", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""), "wsgi.errors": sys.stderr,
    }  # fmt: skip
    response = _handler(WSGIHandler)(environ, lambda s, headers: status.append(s))
    try:
        body = b"".join(response)
    finally:
        response.close()  # sends request_finished: Django closes (returns) the connection
    return int(status[0].split()[0]), body


_handlers: dict[type, Any] = {}


def _handler(cls: type) -> Any:
    if cls not in _handlers:
        _handlers[cls] = cls()
    return _handlers[cls]


def session() -> dict[str, Any]:
    code, body = request("/session/")
    assert code == 200, body
    result: dict[str, Any] = json.loads(body)
    return result


def pool_stats(alias: str = "default") -> dict[str, Any]:
    from pgpool.contrib.django import stats

    return dict(stats()[alias]._asdict())


def run_threads(count: int, work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


# -- the scenarios --------------------------------------------------------------------------


@scenario
def imports() -> dict[str, Any]:
    """What importing pgpool and its contrib package pulls in (Django is importable here)."""
    import pgpool
    import pgpool.contrib.django

    before = "django" in sys.modules
    import django

    django.setup()
    from django.db import connection

    return {"django_imported_by_pgpool": before, "vendor": connection.vendor,
            "pool_property": repr(connection.pool), "pgpool": pgpool.__name__}  # fmt: skip


@scenario
def threads() -> dict[str, Any]:
    """Many threads through WSGIHandler: every request served, by at most max_size."""
    from django.db import connection

    codes: list[int] = []
    pids: set[int] = set()

    def work(i: int) -> None:
        for _ in range(25):
            codes.append(request("/hit/", f"name=t{i % 4}")[0])
        pids.add(session()["pid"])

    run_threads(16, work)
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        sessions = cursor.fetchone()[0]
    connection.close()
    return {"codes": sorted(set(codes)), "requests": len(codes), "pids": len(pids),
            "server_sessions": sessions, "stats": pool_stats(),
            "options": sorted(connection.settings_dict["OPTIONS"])}  # fmt: skip


@scenario
def session_state() -> dict[str, Any]:
    """A borrower changes time zone, isolation, read-only; the next one must not see it."""
    fresh = session()
    _, dirty_body = request("/dirty/")
    after = session()
    return {"fresh": fresh, "dirty": json.loads(dirty_body), "after": after,
            "stats": pool_stats()}  # fmt: skip


@scenario
def steady() -> dict[str, Any]:
    """Requests on a warm connection, between two marker statements in the server's log."""
    from django.db import connection

    def mark(text: str) -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT %s", [text])
        connection.close()

    session()  # the first checkout: the pool opens and sets up its connection
    mark("steady-start")
    seen = [session() for _ in range(5)]
    mark("steady-end")
    return {"pids": sorted({s["pid"] for s in seen}), "users": sorted({s["user"] for s in seen}),
            "zones": sorted({s["time_zone"] for s in seen})}  # fmt: skip


@scenario
def raising_view() -> dict[str, Any]:
    """A view that raises mid-transaction: 500, nothing committed, the next request fine."""
    from shop.models import Counter

    code, _ = request("/boom/", "name=lost")
    after = session()
    return {"code": code, "committed": Counter.objects.filter(name="lost").exists(),
            "next": after, "hit": request("/hit/", "name=after-boom")[0],
            "stats": pool_stats()}  # fmt: skip


@scenario
def two_aliases() -> dict[str, Any]:
    """A router sends Note to "other": one pool per alias, each on its database."""
    from django.db import connections

    codes = [request("/note/")[0] for _ in range(5)]
    databases = {}
    for alias in ("default", "other"):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT current_database()")
            databases[alias] = cursor.fetchone()[0]
        connections[alias].close()
    names = {alias: connections[alias].pgpool_pool.name for alias in ("default", "other")}
    return {"codes": codes, "databases": databases, "default": pool_stats("default"),
            "other": pool_stats("other"), "pool_names": names}  # fmt: skip


@scenario
def override_time_zone() -> dict[str, Any]:
    """override_settings(TIME_ZONE) reaches the session, and the pool survives it."""
    from django.db import connection
    from django.test.utils import override_settings

    def zone() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('TimeZone')")
            return str(cursor.fetchone()[0])

    seen = {"before": zone()}
    with override_settings(TIME_ZONE="America/New_York"):
        seen["inside"] = zone()
        connection.close()
        seen["inside_next_checkout"] = zone()
    seen["after"] = zone()
    connection.close()
    seen["after_next_checkout"] = zone()
    connection.close()
    return {"zones": seen, "stats": pool_stats()}


@scenario
def close_in_atomic() -> dict[str, Any]:
    """Closing inside atomic() must let go of a connection the pool lends again."""
    from django.db import connection, transaction

    def pid() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    other: dict[str, Any] = {}
    taken, release = threading.Event(), threading.Event()

    def borrower() -> None:  # another request, which the pool (max_size 1) serves next
        other["pid"] = pid()
        with transaction.atomic():
            pid()
            taken.set()
            release.wait(10)
        connection.close()

    error = None
    with transaction.atomic():
        mine = pid()
        connection.close()
        held = connection.connection is not None
        thread = threading.Thread(target=borrower)
        thread.start()
        taken.wait(10)
        try:
            pid()  # must fail: this block's connection is gone (it now serves the borrower)
        except Exception as exc:
            error = type(exc).__name__
        release.set()
        thread.join()
    connection.close()
    return {"mine": mine, "other": other.get("pid"), "error": error, "held": held}


@scenario
def rename() -> dict[str, Any]:
    """The test runner's way: NAME changed in place, then close(). The next checkout must
    reach the new database, not the pool of the old one."""
    from django.db import connection

    def database() -> str:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_database()")
            return str(cursor.fetchone()[0])

    first = database()
    connection.close()
    connection.settings_dict["NAME"] = os.environ["PGPOOL_DJANGO_OTHER_DB"]
    second = database()
    connection.close()
    return {"first": first, "second": second}


@scenario
def leak() -> dict[str, Any]:
    """A thread keeps its connection for ever; max_lease gives the slot back."""
    from django.db import connection

    def forgetful() -> None:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")  # and never closes: no close_old_connections here

    thread = threading.Thread(target=forgetful)
    thread.start()
    thread.join()
    start = time.monotonic()
    code = request("/hit/", "name=after-leak")[0]  # max_size 1: waits for the reclaim
    return {"code": code, "waited": time.monotonic() - start, "stats": pool_stats()}


@scenario
def fork() -> dict[str, Any]:
    """A child forked while the parent holds a connection gets connections of its own."""
    from django.db import connection

    def pid() -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            return int(cursor.fetchone()[0])

    parent_before = pid()  # held by this thread's wrapper across the fork
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: a request and a query, then a normal exit (atexit runs)
        os.close(read)
        try:
            result = {"code": request("/hit/", "name=child")[0], "pid": pid()}
        except Exception as exc:
            result = {"error": repr(exc)}
        os.write(write, json.dumps(result).encode())
        os.close(write)
        sys.stdout.flush()
        raise SystemExit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child_result = json.loads(pipe.read() or "{}")
    _, status = os.waitpid(child, 0)
    return {"parent_before": parent_before, "parent_after": pid(), "child": child_result,
            "child_status": status, "code": request("/hit/", "name=parent")[0]}  # fmt: skip


@scenario
def restart() -> dict[str, Any]:
    """Requests from 16 threads while the test restarts the server: count the failures."""
    done = threading.Event()
    counts = {"ok": 0, "failed": 0}
    lock = threading.Lock()

    def work(i: int) -> None:
        while not done.is_set():
            code, _ = request("/hit/", f"name=r{i % 4}")
            with lock:
                counts["ok" if code == 200 else "failed"] += 1

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)
    print("READY", flush=True)  # the test restarts the server, then answers
    sys.stdin.readline()
    time.sleep(1.0)  # requests go on after the restart
    done.set()
    for thread in threads:
        thread.join()
    return {**counts, "stats": pool_stats()}


@scenario
def settings_errors() -> dict[str, Any]:
    """Bad settings raise ImproperlyConfigured before any connection is opened."""
    from django.db import connection

    try:
        connection.ensure_connection()
    except Exception as exc:
        return {"error": type(exc).__name__, "message": str(exc)}
    return {"error": None}


@scenario
def prometheus() -> dict[str, Any]:
    """The Prometheus collector labels each pool by its alias."""
    from django.db import connections
    from prometheus_client import CollectorRegistry, generate_latest

    from pgpool.metrics import PoolCollector

    for alias in ("default", "other"):
        connections[alias].ensure_connection()
        connections[alias].close()
    registry = CollectorRegistry()
    registry.register(PoolCollector())
    text = generate_latest(registry).decode()
    return {"lines": [line for line in text.splitlines() if line.startswith("pgpool_max_size")]}


if __name__ == "__main__":
    name = sys.argv[1]
    if name != "imports":
        import django

        django.setup()
    print(json.dumps(SCENARIOS[name]()), flush=True)

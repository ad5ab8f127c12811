"""Scenario 10, django: a Django site on psycopg2, with and without a pool.

Django on psycopg2 has no pool of its own: its users run with ``CONN_MAX_AGE = 0``
(Django's default: a connect per request), ``CONN_MAX_AGE = None`` (one connection per
thread, kept for ever), or a third-party backend; django-db-connection-pool, a SQLAlchemy
``QueuePool`` inside a Django backend, is the maintained one. Against them, the ENGINE
``pgpool.contrib.django``.

Method: the project of ``testbed/django_project`` runs in a venv of its own (Django picks
psycopg 3 whenever it can import it; ``scripts/_venv_django.sh 5.2 bench`` makes it, with
django-db-connection-pool). For each contender a fresh process runs 32 threads, each making
requests through Django's real ``WSGIHandler`` in a loop (``testbed/django_project/load.py``):
``atomic()`` + ``get_or_create`` + an ``UPDATE`` + a ``count()``. The pools are capped at
10. Reported: requests per second, connects per 1,000 requests (``psycopg2.connect``
calls, counted in the process), p50/p99 of a request, and the most server sessions of the
database seen during the run. Then each contender again with 16 threads (pools capped at
4) while the server restarts (``pg_ctl restart -m fast`` of a second embedded server):
the requests that failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.common import Context, Table, fmt, spread_column, spread_note
from benchmarks.stats import summarize

NAME = "django"
TITLE = "Django: 32 threads through WSGIHandler, pools capped at 10"
ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "testbed" / "django_project"
SERIES = "5.2"
THREADS, MAX_SIZE = 32, 10
RESTART_THREADS, RESTART_MAX_SIZE = 16, 4
NO_POOL = {"pool": False}
# (key, label, settings from the environment: see testbed/django_project/project/settings.py)
CONTENDERS: list[tuple[str, str, dict[str, Any]]] = [
    ("max_age_0", "CONN_MAX_AGE=0", {"ENGINE": "django.db.backends.postgresql",
                                      "POOL": False, "CONN_MAX_AGE": 0}),
    ("max_age_none", "CONN_MAX_AGE=None", {"ENGINE": "django.db.backends.postgresql",
                                            "POOL": False, "CONN_MAX_AGE": None}),
    ("pgpool", "pgpool ENGINE", {"ENGINE": "pgpool.contrib.django", "POOL": "size"}),
    ("ddcp", "db-connection-pool", {"ENGINE": "dj_db_conn_pool.backends.postgresql",
                                           "POOL": False, "POOL_OPTIONS": "size"}),
]  # fmt: skip


def _sizes(quick: bool) -> tuple[int, float]:
    """(repetitions, seconds measured per run)."""
    return (1, 1.0) if quick else (3, 5.0)


def steps(quick: bool) -> int:
    reps, _ = _sizes(quick)
    return reps * len(CONTENDERS) + len(CONTENDERS)


def _python() -> Path:
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "_venv_django.sh"), SERIES, "bench"],
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    return ROOT / f".venv-django-{SERIES}-bench" / "bin" / "python"


def _environment(dsn: str, database: str, settings: dict[str, Any], size: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGPOOL_", "PYTHON"))}
    env.update(PGPOOL_DJANGO_DSN=dsn, PGPOOL_DJANGO_DB=database,
               PGPOOL_DJANGO_OTHER_DB=f"{database}_other")  # fmt: skip
    for name, value in settings.items():
        if value == "size":
            value = {"max_size": size} if name == "POOL" else {"POOL_SIZE": size,
                                                                 "MAX_OVERFLOW": 0}  # fmt: skip
        env[f"PGPOOL_DJANGO_{name}"] = json.dumps(value)
    env["PGPOOL_DJANGO_ENGINE"] = settings["ENGINE"]
    return env


@contextlib.contextmanager
def _databases(python: Path, dsn: str) -> Iterator[str]:
    """The project's two databases on the server at `dsn`, migrated; dropped afterwards."""
    from testbed.embedded import run_sql

    name = f"pgpool_bench_django_{os.getpid()}"
    for db in (name, f"{name}_other"):
        run_sql(dsn, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        run_sql(dsn, f"CREATE DATABASE {db}")
    env = _environment(dsn, name, CONTENDERS[0][2], MAX_SIZE)
    for alias in ("default", "other"):
        subprocess.run([str(python), "manage.py", "migrate", "--database", alias, "-v", "0"],
                       cwd=PROJECT, env=env, check=True, capture_output=True,
                       timeout=300)  # fmt: skip
    try:
        yield name
    finally:
        for db in (name, f"{name}_other"):
            run_sql(dsn, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")


def _load(python: Path, env: dict[str, str], threads: int, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [str(python), "load.py", str(threads), str(seconds)], cwd=PROJECT, env=env,
        capture_output=True, text=True, timeout=120 + seconds,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"load.py failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _restart(python: Path, env: dict[str, str], server: Any, seconds: float) -> dict[str, Any]:
    process = subprocess.Popen(
        [str(python), "load.py", str(RESTART_THREADS), str(seconds), "--restart"],
        cwd=PROJECT, env=env, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stdin is not None
        line = process.stdout.readline().strip()
        if line != "READY":
            raise RuntimeError(f"load.py --restart said {line!r}: {process.stderr.read()[-2000:]}")
        started = time.monotonic()
        server.restart()
        downtime = time.monotonic() - started
        process.stdin.write("go\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=120 + seconds)
    finally:
        process.kill()
    if process.returncode != 0:
        raise RuntimeError(f"load.py --restart failed: {err[-2000:]}")
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["downtime_s"] = downtime
    return result


def run(ctx: Context) -> dict[str, Any]:
    from testbed.embedded import EmbeddedPostgres

    reps, seconds = _sizes(ctx.quick)
    python = _python()
    runs: dict[str, list[dict[str, Any]]] = {key: [] for key, _, _ in CONTENDERS}
    with _databases(python, ctx.dsn) as database:
        for rep in range(reps):
            shift = rep % len(CONTENDERS)
            for key, _label, settings in CONTENDERS[shift:] + CONTENDERS[:shift]:
                env = _environment(ctx.dsn, database, settings, MAX_SIZE)
                runs[key].append(_load(python, env, THREADS, seconds))
                ctx.advance(f"django / {key}")
    restarts: dict[str, dict[str, Any]] = {}
    with EmbeddedPostgres() as server, _databases(python, server.dsn) as database:
        for key, _label, settings in CONTENDERS:
            env = _environment(server.dsn, database, settings, RESTART_MAX_SIZE)
            restarts[key] = _restart(python, env, server, seconds)
            ctx.advance(f"django / restart / {key}")
    rows: dict[str, Any] = {}
    for key, results in runs.items():
        rows[key] = {
            metric: summarize(r[metric] for r in results).to_dict()
            for metric in ("rps", "p50_ms", "p99_ms", "connects_per_1000")
        }
        rows[key]["server_sessions"] = max(r["server_sessions"] for r in results)
        rows[key]["failed"] = sum(r["failed"] for r in results)
        rows[key]["restart"] = restarts[key]
        rows[key]["per_rep"] = results
    return {
        "title": TITLE,
        "settings": {
            "threads": THREADS,
            "max_size": MAX_SIZE,
            "seconds": seconds,
            "repetitions": reps,
            "restart_threads": RESTART_THREADS,
            "restart_max_size": RESTART_MAX_SIZE,
            "django": _version(python, "django"),
            "django_db_connection_pool": _version(python, "django-db-connection-pool"),
        },
        "labels": {key: label for key, label, _ in CONTENDERS},
        "rows": rows,
    }


def _version(python: Path, dist: str) -> str | None:
    done = subprocess.run(
        [str(python), "-c", f"from importlib.metadata import version; print(version({dist!r}))"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return done.stdout.strip() or None


def tables(result: dict[str, Any]) -> list[Table]:
    rows, labels, st = result["rows"], result["labels"], result["settings"]
    rps = spread_column(rows, "rps", 0)
    p50 = spread_column(rows, "p50_ms", 0)
    p99 = spread_column(rows, "p99_ms", 0)
    connects = spread_column(rows, "connects_per_1000", 0)
    cells = [
        [labels[key], rps[key], connects[key], p50[key], p99[key],
         str(row["server_sessions"]), str(row["restart"]["failed"])]
        for key, row in rows.items()
    ]  # fmt: skip
    downtimes = [row["restart"]["downtime_s"] for row in rows.values()]
    notes = [
        f"{spread_note(st['repetitions'])}, {st['seconds']:g} s each, contenders taking "
        f"turns; Django {st['django']}, django-db-connection-pool "
        f"{st['django_db_connection_pool']}",
        "connects: psycopg2.connect calls per 1,000 requests; sessions: the most server "
        "sessions of the database seen",
        "db-connection-pool: django-db-connection-pool (SQLAlchemy's QueuePool)",
        f"failed: requests that failed while {st['restart_threads']} threads ran "
        f"(pools capped at {st['restart_max_size']}) and the server restarted (down for "
        f"{fmt(min(downtimes), 2)}-{fmt(max(downtimes), 2)} s)",
    ]
    cols = ["Django with", "req/s", "connects/1k", "p50 ms", "p99 ms", "sessions", "failed"]
    return [Table(TITLE, cols, cells, notes)]


if __name__ == "__main__":  # pragma: no cover - a way to run it alone
    sys.exit("run it with: python -m benchmarks --scenario django")

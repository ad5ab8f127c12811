"""ENGINE "pgpool.contrib.django": a real Django project on the suite's server.

Django runs in a venv of its own (`scripts/_venv_django.sh` makes it on first use): it
picks psycopg 3 whenever it can import it, and this suite's venv has psycopg 3. Each
scenario of ``testbed/django_project/scenarios.py`` runs in a fresh process of that venv and
prints what it saw; the assertions are here. Django 5.2 runs by default, 4.2 LTS with
``--run-slow``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from psycopg2.extensions import parse_dsn

from testbed.embedded import EmbeddedPostgres, run_sql

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ROOT / "testbed" / "django_project"
SERIES = ["5.2", pytest.param("4.2", marks=pytest.mark.slow)]
# The first test of each series builds its virtualenv (a module-scoped fixture, which
# pytest-timeout counts in that test): longer than the suite's one-minute default.
pytestmark = pytest.mark.timeout(300)


@dataclass
class Django:
    """One Django series' venv, with the project's two databases migrated on a server."""

    series: str
    python: Path
    env: dict[str, str]

    def run(
        self, *args: str, pool: Any = None, check: bool = True,
        environ: dict[str, str] | None = None, **settings: str,
    ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run ``python ARGS`` in the project, with OPTIONS["pool"] and settings overridden."""
        env = {**self.env, **{f"PGPOOL_DJANGO_{k.upper()}": v for k, v in settings.items()}}
        env.update(environ or {})
        if pool is not None:
            env["PGPOOL_DJANGO_POOL"] = json.dumps(pool)
        done = subprocess.run(
            [str(self.python), *_measured(args)], cwd=PROJECT, env=env, capture_output=True,
            text=True, timeout=120,
        )  # fmt: skip
        if check and done.returncode != 0:
            pytest.fail(f"{' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
        return done

    def scenario(self, name: str, **kwargs: Any) -> dict[str, Any]:
        done = self.run("scenarios.py", name, **kwargs)
        result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return result


# The backend runs only in these subprocesses, so the suite's coverage leaves it out
# (pyproject.toml). PGPOOL_DJANGO_COVERAGE=DIR measures it there instead: each process
# writes a data file into DIR; then `coverage combine DIR/.coverage.*; coverage report`.
COVERAGE_DIR = os.environ.get("PGPOOL_DJANGO_COVERAGE")


def _measured(args: tuple[str, ...]) -> list[str]:
    if not COVERAGE_DIR or args[:1] == ("-c",):
        return list(args)
    data = str(Path(COVERAGE_DIR).resolve() / ".coverage")
    source = str(ROOT / "pgpool" / "contrib" / "django")
    return ["-m", "coverage", "run", "--parallel-mode", "--branch", f"--data-file={data}",
            f"--source={source}", *args]  # fmt: skip


def _databases(series: str) -> tuple[str, str]:
    tag = f"pgpool_django{series.replace('.', '')}_{os.getpid()}"
    return tag, f"{tag}_other"


def _create(dsn: str, names: tuple[str, ...]) -> None:
    for name in names:
        run_sql(dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        run_sql(dsn, f"CREATE DATABASE {name}")


def _drop(dsn: str, names: tuple[str, ...]) -> None:
    for name in names:
        run_sql(dsn, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _environment(python: Path, dsn: str, names: tuple[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PGPOOL_", "PYTHON"))}
    return {
        **env, "PGPOOL_DJANGO_DSN": dsn, "PGPOOL_DJANGO_DB": names[0],
        "PGPOOL_DJANGO_OTHER_DB": names[1],
    }  # fmt: skip


def _migrate(django: Django) -> None:
    django.run("manage.py", "migrate", "--noinput", "-v", "0")
    django.run("manage.py", "migrate", "--database", "other", "--noinput", "-v", "0")


def _project_on(server: EmbeddedPostgres, django: Django) -> Django:
    """The test project on `server` (the restartable one) instead of the suite's: its two
    databases made afresh there, and migrated."""
    names = _databases(django.series)
    _create(server.dsn, names)
    project = Django(django.series, django.python, _environment(django.python, server.dsn, names))
    _migrate(project)
    return project


@pytest.fixture(scope="module", params=SERIES)
def django_venv(request: pytest.FixtureRequest) -> Path:
    series: str = request.param
    subprocess.run(["bash", str(ROOT / "scripts" / "_venv_django.sh"), series],
                   check=True, timeout=900, capture_output=True)  # fmt: skip
    return ROOT / f".venv-django-{series}" / "bin" / "python"


@pytest.fixture(scope="module")
def django(django_venv: Path, dsn: str) -> Iterator[Django]:
    series = django_venv.parent.parent.name.rsplit("-", 1)[1]
    names = _databases(series)
    _create(dsn, names)
    project = Django(series, django_venv, _environment(django_venv, dsn, names))
    _migrate(project)
    yield project
    _drop(dsn, names)


# -- the backend's set-up -------------------------------------------------------------------


def test_import_pgpool_does_not_import_django(django: Django) -> None:
    seen = django.scenario("imports")
    assert seen["django_imported_by_pgpool"] is False
    assert seen["pool_property"] == "None"  # Django 5.1+'s psycopg 3 pool path stays off


def test_refuses_to_load_when_django_would_pick_psycopg3(django: Django) -> None:
    # This suite's venv has psycopg 3: put it behind the Django venv's own packages.
    done = django.run("scenarios.py", "settings_errors", check=False,
                      environ={"PYTHONPATH": sysconfig.get_paths()["purelib"]})  # fmt: skip
    assert done.returncode != 0
    assert "pgpool.contrib.django pools psycopg2 connections" in done.stderr
    assert "Uninstall psycopg" in done.stderr


@pytest.mark.parametrize(
    ("pool", "settings", "message"),
    [
        ({}, {"conn_max_age": "60"}, "Pooling doesn't support persistent connections."),
        ({}, {"conn_max_age": "null"}, "Pooling doesn't support persistent connections."),
        ({"num_workers": 3}, {}, "unknown setting(s) 'num_workers'"),
        ({"reset": "pgpool.nothing_here"}, {}, "cannot import 'pgpool.nothing_here'"),
        ({"max_size": 0}, {}, "maxconn must be >= 1"),
        ("many", {}, "must be True or a dict"),
    ],
)
def test_bad_settings_raise_improperly_configured(
    django: Django, pool: Any, settings: dict[str, str], message: str
) -> None:
    seen = django.scenario("settings_errors", pool=pool, **settings)
    assert seen["error"] == "ImproperlyConfigured"
    assert message in seen["message"]


def test_psycopg_pool_names_and_django_settings_map_to_pgpool_options(django: Django) -> None:
    code = (
        "import json, sys; from pgpool.contrib.django import options;"
        "print(json.dumps(options.pool_arguments('default', json.loads(sys.argv[1]))))"
    )
    given = {"min_size": 2, "max_size": 8, "timeout": 5, "max_waiting": 3, "max_idle": 60,
             "max_lifetime": 600, "reconnect_timeout": 30, "max_connecting": 1}  # fmt: skip
    settings = {"OPTIONS": {"pool": given}, "CONN_HEALTH_CHECKS": True}
    mapped = json.loads(django.run("-c", code, json.dumps(settings)).stdout)
    assert mapped == {"minconn": 2, "maxconn": 8, "timeout": 5, "max_waiting": 3,
                      "max_idle": 60, "max_lifetime": 600, "reconnect_timeout": 30,
                      "max_connecting": 1, "max_lease": 3600.0,
                      "health_check_after": 0.0}  # fmt: skip
    defaults = json.loads(django.run("-c", code, '{"OPTIONS": {"pool": true}}').stdout)
    assert defaults == {"minconn": 4, "maxconn": 4, "max_lease": 3600.0}  # psycopg_pool's sizes
    small = json.loads(django.run("-c", code, '{"OPTIONS": {"pool": {"max_size": 2}}}').stdout)
    assert (small["minconn"], small["maxconn"]) == (2, 2)


def test_an_invalid_isolation_level_is_refused_in_djangos_words(django: Django) -> None:
    seen = django.scenario("settings_errors", options=json.dumps({"isolation_level": 99}))
    assert seen["error"] == "ImproperlyConfigured"
    assert seen["message"].startswith("Invalid transaction isolation level 99 specified.")


def test_a_configure_hook_by_dotted_path_runs_once_per_connection(django: Django) -> None:
    pool = {"max_size": 1, "configure": "shop.hooks.name_the_session"}
    seen = django.scenario("session_state", pool=pool)
    assert seen["fresh"]["application_name"] == "configured-by-hook"
    assert seen["after"]["application_name"] == "configured-by-hook"
    assert seen["after"]["time_zone"] == "Europe/Paris"  # the backend's set-up ran too
    assert seen["stats"]["connections_opened"] == 1


def test_dotted_paths_and_pgpool_options_are_accepted(django: Django) -> None:
    pool = {"min_size": 1, "max_size": 2, "reset": "pgpool.discard_all", "max_lease": None,
            "health_check_after": 0, "max_connecting": 1, "timeout": 5}  # fmt: skip
    assert django.scenario("settings_errors", pool=pool)["error"] is None


# -- requests -------------------------------------------------------------------------------


def test_many_threads_through_wsgihandler_share_max_size_connections(django: Django) -> None:
    seen = django.scenario("threads", pool={"max_size": 4})
    assert seen["codes"] == [200]
    assert seen["requests"] == 400
    stats = seen["stats"]
    assert stats["connections_opened"] == 4  # 16 threads, 416 checkouts, 4 connections
    assert stats["checkouts"] >= 416
    assert seen["server_sessions"] <= 4
    assert stats["in_use"] == 0  # every request gave its connection back
    assert seen["options"] == ["pool"]  # the shared settings are left as they were


def test_session_changes_do_not_leak_to_the_next_request(django: Django) -> None:
    seen = django.scenario("session_state", pool={"max_size": 1})
    dirty, after = seen["dirty"], seen["after"]
    assert (dirty["time_zone"], dirty["isolation"], dirty["read_only"]) == (
        "Asia/Tokyo", "serializable", "on")  # fmt: skip
    assert after["pid"] == dirty["pid"]  # the same connection, cleaned
    assert (after["time_zone"], after["isolation"], after["read_only"]) == (
        "Europe/Paris", "read committed", "off")  # fmt: skip
    assert seen["fresh"]["time_zone"] == "Europe/Paris"


def test_assume_role_is_the_role_of_every_checkout(django: Django, dsn: str) -> None:
    role = f"pgpool_django_role_{os.getpid()}"
    run_sql(dsn, f"DROP ROLE IF EXISTS {role}")
    run_sql(dsn, f"CREATE ROLE {role}")
    try:
        seen = django.scenario("session_state", pool={"max_size": 1}, role=role)
    finally:
        run_sql(dsn, f"DROP ROLE {role}")
    assert seen["fresh"]["user"] == role
    assert seen["after"]["user"] == role
    assert seen["stats"]["connections_opened"] == 1


def test_a_steady_request_makes_no_extra_round_trip(
    django: Django, restartable_server: EmbeddedPostgres
) -> None:
    # Django without a pool sets the time zone and the role on every connection, that is
    # every request; here the pool's configure did it once. The server logs every statement.
    project = _project_on(restartable_server, django)
    role = "pgpool_django_steady"
    restartable_server.execute(f"CREATE ROLE {role}")
    restartable_server.execute("ALTER SYSTEM SET log_statement = 'all'")
    restartable_server.execute("SELECT pg_reload_conf()")
    seen = project.scenario("steady", pool={"min_size": 1, "max_size": 1}, role=role)
    assert seen == {"pids": seen["pids"][:1], "users": [role], "zones": ["Europe/Paris"]}
    assert restartable_server.log_file is not None
    lines = [line for line in restartable_server.log_file.read_text().splitlines()
             if "statement: " in line]  # fmt: skip
    start = next(i for i, line in enumerate(lines) if "steady-start" in line)
    end = next(i for i, line in enumerate(lines) if "steady-end" in line)
    statements = lines[start + 1 : end]
    assert len(statements) == 5, statements  # one SELECT per request: no SET, no ping
    assert all("current_setting('TimeZone')" in s for s in statements), statements


@pytest.mark.parametrize("atomic_requests", ["0", "1"])
def test_a_view_raising_mid_transaction(django: Django, atomic_requests: str) -> None:
    seen = django.scenario("raising_view", pool={"max_size": 1}, atomic=atomic_requests)
    assert seen["code"] == 500
    assert seen["committed"] is False
    assert seen["hit"] == 200
    assert seen["next"]["time_zone"] == "Europe/Paris"
    assert seen["stats"]["broken_returns"] == 0


def test_two_aliases_with_a_router_get_a_pool_each(django: Django) -> None:
    seen = django.scenario("two_aliases")
    assert seen["codes"] == [200] * 5
    assert seen["databases"] == {"default": django.env["PGPOOL_DJANGO_DB"],
                                 "other": django.env["PGPOOL_DJANGO_OTHER_DB"]}  # fmt: skip
    assert seen["default"]["name"] == "default"
    assert seen["other"]["name"] == "other"
    assert seen["pool_names"] == {"default": "default", "other": "other"}  # .pgpool_pool
    assert seen["default"]["checkouts"] >= 5
    assert seen["other"]["checkouts"] >= 5


def test_prometheus_collector_labels_pools_by_alias(django: Django) -> None:
    lines = django.scenario("prometheus")["lines"]
    assert 'pgpool_max_size{pool="default"} 4.0' in lines
    assert 'pgpool_max_size{pool="other"} 4.0' in lines


def test_override_settings_time_zone_reaches_the_session(django: Django) -> None:
    seen = django.scenario("override_time_zone", pool={"max_size": 1})
    assert seen["zones"] == {
        "before": "Europe/Paris", "inside": "America/New_York",
        "inside_next_checkout": "America/New_York", "after": "Europe/Paris",
        "after_next_checkout": "Europe/Paris",
    }  # fmt: skip
    # One pool saw the three checkouts: Django 5.1+ would close it at each change of zone.
    assert seen["stats"]["checkouts"] == 3


def test_closing_inside_atomic_lets_go_of_the_connection(django: Django) -> None:
    seen = django.scenario("close_in_atomic", pool={"max_size": 1, "timeout": 1})
    assert seen["other"] == seen["mine"]  # the pool lent it to the other thread...
    assert seen["held"] is False  # ...so the wrapper closed inside the block let go of it,
    # and a query there fails: Django 5.x refuses a new connection inside the block, 4.2
    # asks the pool for one, which has none to give before the timeout.
    expected = "ProgrammingError" if django.series != "4.2" else "OperationalError"
    assert seen["error"] == expected


def test_a_database_renamed_in_place_gets_a_pool_of_its_own(django: Django) -> None:
    seen = django.scenario("rename")
    assert seen == {"first": django.env["PGPOOL_DJANGO_DB"],
                    "second": django.env["PGPOOL_DJANGO_OTHER_DB"]}  # fmt: skip


def test_a_leaked_connection_is_reclaimed_by_max_lease(django: Django) -> None:
    pool = {"max_size": 1, "max_lease": 0.5, "maintenance_interval": 0.1, "timeout": 20}
    seen = django.scenario("leak", pool=pool)
    assert seen["code"] == 200
    assert seen["stats"]["leases_reclaimed"] == 1


def test_max_lease_is_on_by_default(django: Django) -> None:
    code = "from pgpool.contrib.django import options as o; print(o.DEFAULT_MAX_LEASE)"
    done = django.run("-c", code)
    assert float(done.stdout) > 0


def test_a_forked_child_gets_its_own_connections(django: Django) -> None:
    seen = django.scenario("fork", pool={"max_size": 2})
    assert seen["child_status"] == 0
    assert seen["child"]["code"] == 200
    assert seen["child"]["pid"] != seen["parent_before"]
    assert seen["parent_after"] == seen["parent_before"]  # the child left its socket alone
    assert seen["code"] == 200


def test_under_gevent_greenlets_share_max_size_connections(django: Django) -> None:
    done = django.run("under_gevent.py", pool={"min_size": 1, "max_size": 4})
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["codes"] == [200]
    # 20 requests of 50 ms in the server: the pool opens a connection only for a request
    # that finds none idle, so all 4 mean that requests overlapped (a hub blocked by libpq
    # would serve them one at a time, on 1 connection), and never a fifth.
    assert seen["stats"]["connections_opened"] == 4, seen


# -- manage.py test -------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [[], ["--parallel", "2"]], ids=["plain", "parallel"])
def test_manage_py_test(django: Django, dsn: str, parallel: list[str]) -> None:
    done = django.run("manage.py", "test", "shop", "--noinput", *parallel)
    assert "OK" in done.stderr
    assert "Ran 4 tests" in done.stderr
    rows = run_sql(dsn, "SELECT datname FROM pg_database WHERE datname LIKE 'test_pgpool%'")
    assert rows == []  # every test database (and clone) dropped: the pools let go of them


# -- a server restart under load ------------------------------------------------------------


def test_server_restart_under_load_fails_only_requests_in_flight(
    django: Django, restartable_server: EmbeddedPostgres
) -> None:
    project = _project_on(restartable_server, django)
    env = {**project.env, "PGPOOL_DJANGO_POOL": json.dumps({"max_size": 4})}
    process = subprocess.Popen(
        [str(project.python), "scenarios.py", "restart"], cwd=PROJECT, env=env, text=True,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert process.stdout is not None and process.stdin is not None
        assert process.stdout.readline().strip() == "READY"
        started = time.monotonic()
        restartable_server.restart()
        downtime = time.monotonic() - started
        process.stdin.write("go\n")
        process.stdin.flush()
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, err[-3000:]
    seen = json.loads(out.strip().splitlines()[-1])
    # A connection that was open at the restart fails at most one request (a broken one is
    # discarded on return): only the 4 in flight or idle then may fail, whatever the load.
    assert seen["failed"] <= 4, (seen, downtime)
    assert seen["ok"] > 0
    assert parse_dsn(restartable_server.dsn)  # the server is back

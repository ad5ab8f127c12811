"""The fleet scenario's PgBouncer path, small: processes x maxconn client connections
reach PgBouncer, and the server sees no more than PgBouncer's pool size.

(`tests/test_bench.py` runs the whole quick bench, whose DSN carries a password: there the
fleet scenario runs its direct rows only.)
"""

from __future__ import annotations

import pytest
from conftest import EXTERNAL_DSN

from benchmarks import fleet
from testbed.pgbouncer import MISSING, find_pgbouncer


@pytest.mark.skipif(find_pgbouncer() is None, reason=MISSING)
@pytest.mark.skipif(bool(EXTERNAL_DSN), reason="PgBouncer needs the embedded server's trust")
def test_fleet_through_pgbouncer_bounds_server_connections(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet, "PROCESSES", 2)  # the parent's side; children use MAXCONN
    result = fleet._run_fleet(dsn, dsn, "SELECT 1", pool_size=3, seconds=0.5)
    assert result["errors"] == 0
    assert result["tps"] > 0
    assert result["client_connections"] == 2 * fleet.MAXCONN
    assert 1 <= result["server_connections"] <= 3
    assert result["p50_ms"] <= result["p99_ms"]
    assert result["connects"] <= 2 * fleet.MAXCONN  # kept between requests


@pytest.mark.skipif(find_pgbouncer() is None, reason=MISSING)
@pytest.mark.skipif(bool(EXTERNAL_DSN), reason="PgBouncer needs the embedded server's trust")
def test_fleet_null_pool_row_keeps_no_client_connection_between_requests(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fleet, "PROCESSES", 2)
    result = fleet._run_fleet(dsn, dsn, "SELECT 1", pool_size=3, seconds=0.5, null=True)
    assert result["errors"] == 0
    assert result["tps"] > 0
    assert result["client_connections"] <= 2 * fleet.MAXCONN  # never more than maxconn each
    assert 1 <= result["server_connections"] <= 3
    # A connect per request: at least as many as the requests measured after the warm-up
    # (a ThreadedConnectionPool opens 2 x MAXCONN in all).
    assert result["connects"] >= result["tps"] * 0.5 > 2 * fleet.MAXCONN


def test_fleet_rows_need_pgbouncer_and_trust() -> None:
    if find_pgbouncer() is not None:
        assert fleet._bouncer_unavailable("host=db password=x") is not None
        assert fleet._bouncer_unavailable("host=/tmp dbname=x") is not None
        assert fleet._bouncer_unavailable("dbname=x") is not None  # the default socket
        assert fleet._bouncer_unavailable("host=a,b port=1,2") is not None
        assert fleet._bouncer_unavailable("host=127.0.0.1 port=5432") is None
    else:
        assert fleet._bouncer_unavailable("host=127.0.0.1") == MISSING


@pytest.mark.skipif(find_pgbouncer() is None, reason=MISSING)
@pytest.mark.skipif(bool(EXTERNAL_DSN), reason="starts a server of its own")
def test_fleet_over_the_server_limit_fails_directly_and_works_through_pgbouncer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sizing rule broken: 4 processes x 4 connections against a server that allows
    the role 3. Directly, at least one process gets no connection at all and serves no
    request (its threads wait in getconn, or fail when their own connect is refused;
    one that got fewer than 4 shares them between its threads); through a PgBouncer
    pool of 2, every process serves and no request fails."""
    monkeypatch.setattr(fleet, "PROCESSES", 4)
    monkeypatch.setattr(fleet, "LIMIT", 3)
    with fleet._limited_server() as (app_dsn, admin_dsn):
        direct = fleet._run_fleet(app_dsn, admin_dsn, "SELECT 1", pool_size=None, seconds=0.5)
        pooled = fleet._run_fleet(app_dsn, admin_dsn, "SELECT 1", pool_size=2, seconds=0.5)
    assert direct["starved_processes"] >= 1
    assert direct["server_connections"] <= 3
    assert pooled["errors"] == 0
    assert pooled["starved_processes"] == 0
    assert pooled["client_connections"] == 4 * fleet.MAXCONN
    assert pooled["server_connections"] <= 2

"""Multi-host failover: a libpq multi-host DSN, two servers, the first stopped under load.

libpq tries the hosts of ``host=a,b port=pa,pb`` in order and, with
``target_session_attrs=read-write``, keeps the first that accepts writes. pgpool knows
nothing of this: it opens connections with the DSN it was given, drops the ones that die
(a request in flight fails, an idle one fails its health check), and the connects that
replace them land on whichever host libpq picks.

The two embedded servers are independent, not a primary and its replica: nothing is
copied from one to the other. So "no committed row lost" means here: every write whose
COMMIT returned to the caller is found, afterwards, on the server that acknowledged it
(each write reports its server's port). With real replication the same pool behaviour
holds, and whether the standby has the old primary's last commits is the replication's
business (synchronous_commit, synchronous_standby_names), not the pool's.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from conftest import EXTERNAL_DSN
from faultsupport import CONNECT_TIMEOUT, SLACK, unique_app, wait_for

import pgpool
from testbed.embedded import EmbeddedPostgres, run_sql

HEALTH_CHECK_AFTER = 0.2
CHECKOUT_TIMEOUT = 5.0


@pytest.fixture
def two_servers() -> Iterator[tuple[EmbeddedPostgres, EmbeddedPostgres]]:
    if EXTERNAL_DSN:
        pytest.skip("failover needs two servers of our own")
    with EmbeddedPostgres(max_connections=30) as a, EmbeddedPostgres(max_connections=30) as b:
        for server in (a, b):
            server.execute("CREATE TABLE acks (id int PRIMARY KEY)")
        yield a, b


def multi_host_dsn(a: EmbeddedPostgres, b: EmbeddedPostgres, app: str) -> str:
    return (
        f"host={a.host},{b.host} port={a.port},{b.port} dbname=postgres user=postgres "
        f"target_session_attrs=read-write connect_timeout={CONNECT_TIMEOUT} "
        f"application_name={app}"
    )


class Writers:
    """Threads that each loop: check out, INSERT one row, COMMIT, return. A write counts as
    acknowledged once commit() returned; it records which server (port) acknowledged it."""

    def __init__(self, pool: Any, threads: int = 4) -> None:
        self.pool = pool
        self.ids = itertools.count(1)
        self.acked: list[tuple[int, int, float]] = []  # (id, server port, when)
        self.failures: list[str] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> Writers:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(CHECKOUT_TIMEOUT + 2 * CONNECT_TIMEOUT + 5)
            assert not thread.is_alive(), "a writer hangs"

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                row_id = next(self.ids)
            try:
                with self.pool.connection() as conn, conn.cursor() as cur:
                    cur.execute(
                        "INSERT INTO acks VALUES (%s) RETURNING current_setting('port')::int",
                        (row_id,),
                    )
                    (port,) = cur.fetchone()
                # connection() committed on leaving the block: the write is acknowledged.
                with self.lock:
                    self.acked.append((row_id, port, time.monotonic()))
            except (psycopg2.OperationalError, psycopg2.InterfaceError, pgpool.PoolError) as e:
                with self.lock:
                    self.failures.append(type(e).__name__)
                time.sleep(0.01)
            time.sleep(0.002)

    def acked_by(self, port: int, since: float = 0.0) -> list[int]:
        with self.lock:
            return [i for i, p, t in self.acked if p == port and t >= since]


def test_first_host_stopped_under_load_pool_serves_from_second_losing_no_acked_write(
    two_servers: tuple[EmbeddedPostgres, EmbeddedPostgres],
) -> None:
    a, b = two_servers
    app = unique_app("failover")
    pool = pgpool.ThreadedConnectionPool(
        2,
        4,
        multi_host_dsn(a, b, app),
        timeout=CHECKOUT_TIMEOUT,
        health_check_after=HEALTH_CHECK_AFTER,
        max_lifetime=3.0,  # connections made during the outage move back once `a` returns
        maintenance_interval=0.2,
    )
    with pool, Writers(pool) as writers:
        wait_for(lambda: len(writers.acked_by(a.port)) >= 20, 10, "writes on the first host")
        assert writers.acked_by(b.port) == []  # libpq picks the first host that accepts

        stopped = time.monotonic()
        a.stop("fast")  # sessions aborted mid-transaction, new connects refused
        wait_for(lambda: writers.acked_by(b.port, stopped), 15, "writes on the second host")
        took = min(t for _, p, t in writers.acked if p == b.port) - stopped
        # Within the pool's own deadlines (a hang guard, not a performance figure): the
        # dead connections are found at once (refused, or a failed check) and a connect
        # to the second host is one connect_timeout at most.
        assert took < CHECKOUT_TIMEOUT + CONNECT_TIMEOUT + SLACK
        wait_for(lambda: len(writers.acked_by(b.port, stopped)) >= 20, 10, "steady on b")
        print(
            f"failover: first write on the second host {took * 1000:.0f} ms after the stop; "
            f"{len(writers.failures)} requests failed meanwhile ({set(writers.failures)})"
        )

        # The first host comes back: new connections go to it again (first in the list
        # and read-write), and max_lifetime moves the others back in a few seconds. Two
        # independent servers now both hold part of the data: see docs/deploying.md.
        back = time.monotonic()
        a.start()
        wait_for(lambda: len(writers.acked_by(a.port, back)) >= 20, 15, "writes back on a")

        def all_recent_on_a() -> bool:
            recent = time.monotonic() - 0.5
            return bool(writers.acked_by(a.port, recent)) and not writers.acked_by(b.port, recent)

        wait_for(all_recent_on_a, 15, "every connection back on the first host")
    with writers.lock:
        acked = list(writers.acked)
    for server in (a, b):
        rows = server.execute("SELECT id FROM acks")
        assert rows is not None
        stored = {row[0] for row in rows}
        mine = {i for i, p, _ in acked if p == server.port}
        assert mine <= stored, f"{len(mine - stored)} acknowledged writes lost on {server}"
    ids_a = {row[0] for row in a.execute("SELECT id FROM acks") or []}
    ids_b = {row[0] for row in b.execute("SELECT id FROM acks") or []}
    assert not ids_a & ids_b  # each write went to exactly one server


def test_a_first_host_that_is_read_only_is_skipped(
    two_servers: tuple[EmbeddedPostgres, EmbeddedPostgres],
) -> None:
    """How a real failover keeps the pool on the new primary: the old one comes back as a
    standby, read-only, and target_session_attrs=read-write makes libpq pass it by."""
    a, b = two_servers
    a.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    a.execute("SELECT pg_reload_conf()")
    wait_for(
        lambda: run_sql(a.dsn, "SHOW default_transaction_read_only") == [("on",)],
        10,
        "a read-only",
    )
    app = unique_app("failover-ro")
    with pgpool.ThreadedConnectionPool(2, 2, multi_host_dsn(a, b, app)) as pool:
        for _ in range(5):
            with pool.connection() as conn, conn.cursor() as cur:
                cur.execute("SELECT current_setting('port')::int")
                assert cur.fetchone() == (b.port,)

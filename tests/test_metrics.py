"""Metrics: `stats()` and `pop_stats()` against the real server, and the Prometheus collector
scraped from a real registry."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import psycopg2
import pytest
from faultsupport import wait_for
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support import DEADLINE

import pgpool
from pgpool.base import live_pools
from pgpool.metrics import PoolCollector
from pgpool.stats import COUNTERS


def _scrape(registry: CollectorRegistry) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """{(sample name, labels): value} from the registry's text exposition, as Prometheus sees it."""
    text = generate_latest(registry).decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(scraped: dict[Any, float], name: str, pool: str, **labels: str) -> float:
    return scraped[(name, frozenset({"pool": pool, **labels}.items()))]


def test_the_snapshot_has_size_as_a_field(dsn: str) -> None:
    with pgpool.ThreadedConnectionPool(2, 4, dsn) as pool:
        conn = pool.getconn()
        stats = pool.stats()
        assert stats.size == stats.idle + stats.in_use + stats.connecting == 2
        assert "size=2" in repr(stats)
        pool.putconn(conn)


def test_pop_stats_reads_and_resets_counters_in_one_step(dsn: str) -> None:
    # The pool's timeout is generous: the second getconn waits for the connector's connect,
    # which a loaded machine can make slow. Only the call meant to time out has a short one.
    with pgpool.ThreadedConnectionPool(1, 2, dsn, timeout=DEADLINE) as pool:
        conns = [pool.getconn(), pool.getconn()]
        with pytest.raises(pgpool.PoolTimeout):
            pool.getconn(timeout=0.05)
        popped = pool.pop_stats()
        assert (popped.checkouts, popped.timeouts, popped.connections_opened) == (2, 1, 2)
        after = pool.stats()
        assert all(getattr(after, counter) == 0 for counter in COUNTERS), after
        assert (after.in_use, after.size) == (2, 2)  # gauges are not counters
        for conn in conns:
            pool.putconn(conn)
        assert pool.pop_stats().checkouts == 0 and pool.getconn() is not None
        assert pool.stats().checkouts == 1


def test_collector_exports_every_gauge_and_counter_of_every_pool(dsn: str) -> None:
    registry = CollectorRegistry()
    registry.register(PoolCollector())
    first = pgpool.ThreadedConnectionPool(1, 3, dsn, name="metrics-a")
    second = pgpool.ThreadedConnectionPool(0, 2, dsn, name="metrics-b", timeout=DEADLINE)
    try:
        held = first.getconn()
        taken = [second.getconn(), second.getconn()]  # each waits for a connect: not timed
        with pytest.raises(pgpool.PoolTimeout):
            second.getconn(timeout=0.05)
        scraped = _scrape(registry)
        assert _value(scraped, "pgpool_connections", "metrics-a", state="in_use") == 1
        assert _value(scraped, "pgpool_connections", "metrics-a", state="idle") == 0
        assert _value(scraped, "pgpool_size", "metrics-b") == 2
        assert _value(scraped, "pgpool_max_size", "metrics-b") == 2
        assert _value(scraped, "pgpool_min_size", "metrics-a") == 1
        assert _value(scraped, "pgpool_checkouts_total", "metrics-b") == 2
        assert _value(scraped, "pgpool_timeouts_total", "metrics-b") == 1
        assert _value(scraped, "pgpool_connections_opened_total", "metrics-a") == 1
        assert _value(scraped, "pgpool_wait_seconds_total", "metrics-b") >= 0.0
        exported = {name for name, labels in scraped if ("pool", "metrics-a") in labels}
        totals = {name.removesuffix("_total") for name in exported if name.endswith("_total")}
        # One counter per PoolStats counter, nothing forgotten, each under its own name.
        assert len(totals) == len(COUNTERS)
        assert "pgpool_leases_reclaimed" in totals and "pgpool_failed_checks" in totals
        first.putconn(held)
        for conn in taken:
            second.putconn(conn)
    finally:
        first.closeall()
        second.closeall()
    # A closed pool is no longer exported.
    assert not any(("pool", "metrics-a") in labels for _, labels in _scrape(registry))


def test_collector_for_chosen_pools_only(dsn: str) -> None:
    registry = CollectorRegistry()
    with (
        pgpool.ThreadedConnectionPool(1, 1, dsn, name="metrics-chosen") as chosen,
        pgpool.ThreadedConnectionPool(1, 1, dsn, name="metrics-other"),
    ):
        registry.register(PoolCollector([chosen]))
        pools = {dict(labels).get("pool") for _, labels in _scrape(registry)}
        assert pools == {"metrics-chosen"}


def test_a_scrape_while_other_threads_create_and_drop_pools_never_raises(dsn: str) -> None:
    """The live-pools set was copied without a lock: a scrape while another thread created a
    pool raised "RuntimeError: Set changed size during iteration". Two threads make and drop
    pools (never opened: no connection) while this one scrapes; a thread switch every
    microsecond and 2,000 pools alive make the copy long enough to be interrupted. Before
    the fix the first scrapes failed; counted, not timed: 100 scrapes, each with new pools."""
    registry = CollectorRegistry()
    registry.register(PoolCollector())
    kept = [pgpool.ThreadedConnectionPool(0, 1, dsn, open=False) for _ in range(2000)]
    made = [0, 0]
    stop = threading.Event()

    def churn(index: int) -> None:
        while not stop.is_set():
            pgpool.ThreadedConnectionPool(0, 1, dsn, open=False)  # made, registered, dropped
            made[index] += 1

    makers = [threading.Thread(target=churn, args=(i,), daemon=True) for i in range(2)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for thread in makers:
            thread.start()
        with pgpool.ThreadedConnectionPool(0, 1, dsn, name="metrics-scraped") as watched:
            for _ in range(100):
                before = sum(made)
                assert _value(_scrape(registry), "pgpool_max_size", "metrics-scraped") == 1
                wait_for(lambda before=before: sum(made) > before, what="a pool made meanwhile")
            assert watched in live_pools() and all(pool in live_pools() for pool in kept[:10])
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        for thread in makers:
            thread.join(10)
    assert sum(made) >= 100


def test_lifecycle_events_are_logged_at_debug_and_the_fast_path_is_not(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgpool")
    secret = "n0t-in-any-log"
    clock = [1000.0]
    pool = pgpool.ThreadedConnectionPool(
        0, 2, dsn, password=secret, timeout=0.05, max_idle=10, clock=lambda: clock[0],
        maintenance_interval=None, open=False,
    )  # fmt: skip
    pool.open()
    conns = [pool.getconn(), pool.getconn()]
    for conn in conns:
        pool.putconn(conn)
    caplog.clear()
    for _ in range(100):  # warm: the checkout's fast path logs nothing at all
        pool.putconn(pool.getconn())
    assert caplog.records == []
    clock[0] += 20  # past max_idle: maintenance reaps both
    pool.maintain()
    pool.closeall()
    text = caplog.text
    assert "closing 2 idle connection(s): 2 reaped" in text and "closed" in text
    everything = [r.getMessage() for r in caplog.records]
    assert all(secret not in line for line in everything)


def test_connects_and_timeouts_are_logged(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="pgpool")
    with pgpool.ThreadedConnectionPool(0, 1, dsn, timeout=DEADLINE) as pool:
        conn = pool.getconn()  # waits for the connector's connect, however slow
        with pytest.raises(pgpool.PoolTimeout):
            pool.getconn(timeout=0.05)
        pool.putconn(conn)
    lines = [r.getMessage() for r in caplog.records]
    assert any("opened a connection in" in line for line in lines)
    assert any("timed out after" in line for line in lines)


def test_no_log_line_is_written_under_the_pool_lock(dsn: str) -> None:
    """A logging handler may write to a file or a socket: never while the pool's lock is held
    (a timeout is raised under the lock, and logged only once it is released)."""
    pool = pgpool.ThreadedConnectionPool(0, 1, dsn, timeout=0.05)
    held: list[bool] = []

    class Probe(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            held.append(pool._lock.locked())

    probe = Probe(logging.DEBUG)
    log = logging.getLogger("pgpool")
    log.addHandler(probe)
    old_level = log.level
    log.setLevel(logging.DEBUG)
    try:
        conn = pool.getconn(timeout=DEADLINE)  # waits for the connect, however slow
        with pytest.raises(pgpool.PoolTimeout):
            pool.getconn()  # the fast path's wait
        with pytest.raises(pgpool.PoolTimeout):
            pool.getconn(timeout=0.05)  # the slow path's
        pool.putconn(conn)
        pool.closeall()
    finally:
        log.removeHandler(probe)
        log.setLevel(old_level)
    assert len(held) >= 3 and not any(held), held


def test_an_outage_is_a_few_log_lines_not_one_per_attempt(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Connects refused for real (nothing listens on port 1) until the test lets them
    reach the server: one WARNING when the run of failures begins, the retries at DEBUG,
    one INFO when a connect succeeds again."""
    caplog.set_level(logging.DEBUG, logger="pgpool")
    down = threading.Event()
    down.set()

    def connect(*args: Any, **kwargs: Any) -> Any:
        if down.is_set():
            return psycopg2.connect("host=127.0.0.1 port=1 connect_timeout=2")
        return psycopg2.connect(*args, **kwargs)

    # 2 s: the wait starts the connector, whose first refused connect must come within it
    # for the timeout to name it (0.5 s was short on a loaded machine).
    with pgpool.ThreadedConnectionPool(0, 1, dsn, connector=connect, timeout=2.0) as pool:
        with pytest.raises(pgpool.PoolTimeout, match="Connection refused"):
            pool.getconn()
        # Counted, not timed: the outage lasts until the back-off has retried a few times
        # (how many fit in 0.5 s depends on how busy the machine is).
        wait_for(lambda: pool.stats().connect_errors >= 3, what="three failed connects")
        down.clear()
        pool.putconn(pool.getconn(timeout=DEADLINE))
    failed = [r for r in caplog.records if "could not open a connection" in r.getMessage()]
    assert len(failed) >= 3, "each failed connect is logged (at DEBUG after the first)"
    assert [r.levelno for r in failed].count(logging.WARNING) == 1
    assert failed[0].levelno == logging.WARNING
    again = [r for r in caplog.records if "connected again after" in r.getMessage()]
    assert len(again) == 1 and again[0].levelno == logging.INFO

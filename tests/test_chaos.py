"""Chaos soak: worker threads run transactions while a fault injector kills backends,
restarts the server and black-holes the network, at random, for a bounded time. One request
in a hundred forgets its connection in a long query, for `max_lease` to reclaim.

Checked all along: the pool never counts more than maxconn connections, every connection
handed out is fit to use, every failure a caller sees is a clear exception. Checked at the
end: every thread finished (none hangs), no slot is lost (maxconn connections can be checked
out at once), no session is leaked (the server sees exactly the pool's connections), and
every commit that returned is in the table, while nothing that was never committed is.

The short run is part of the suite; the long one (``--run-slow``) prints its figures, and
writes them as JSON to ``$PGPOOL_CHAOS_REPORT`` when set. ``PGPOOL_CHAOS_SEED`` replays a
run's random choices (the thread interleaving, of course, differs), and
``PGPOOL_CHAOS_SECONDS`` sets the length of the long run.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg2
import pytest
from faultsupport import (
    backend_pid,
    count_backends,
    is_dirty,
    pool_dsn,
    scalar,
    unique_app,
    wait_for,
)

import pgpool
from testbed.embedded import EmbeddedPostgres, run_sql
from testbed.proxy import TcpProxy

MAXCONN = 5
MINCONN = 2
WORKERS = 8
CHECKOUT_TIMEOUT = 3.0
MAX_LEASE = 1.0  # forgotten borrowers (1 % of requests) are reclaimed after this long
SUSTAINED = 3.0  # seconds a server-side count above maxconn may last with no fault around


@dataclass
class Figures:
    """What one chaos run did; printed, and written as JSON when asked."""

    seed: int
    seconds: float
    workers: int
    maxconn: int
    operations: int = 0  # transactions attempted
    committed: int = 0
    unknown: int = 0  # commit raised: the row may or may not be there
    rolled_back: int = 0  # abandoned on purpose, or failed before commit
    errors: dict[str, int] = field(default_factory=dict)  # by exception type, as callers saw
    faults: dict[str, int] = field(default_factory=dict)
    recovery_seconds: dict[str, list[float]] = field(default_factory=dict)  # fault end -> commit
    unrecovered_before_next_fault: int = 0
    max_pool_size: int = 0
    max_server_backends: int = 0
    leases_reclaimed: int = 0
    server_samples_over_maxconn: int = 0


class Worker(threading.Thread):
    """Inserts (worker, seq) rows; records which commits returned, raised, or never ran."""

    def __init__(self, chaos: Chaos, number: int, seed: int) -> None:
        super().__init__(name=f"chaos-worker-{number}", daemon=True)
        self.chaos = chaos
        self.number = number
        self.rng = random.Random(seed)
        self.committed: set[int] = set()
        self.unknown: set[int] = set()
        self.rolled_back: set[int] = set()
        self.forgotten = 0  # connections kept past max_lease (the pool must reclaim them)

    def run(self) -> None:
        seq = 0
        while not self.chaos.stop_workers.is_set():
            seq += 1
            self.one(seq)

    def one(self, seq: int) -> None:
        chaos = self.chaos
        pool = chaos.pool
        try:
            conn = pool.getconn(timeout=CHECKOUT_TIMEOUT)
            leased_at = time.monotonic()
        except BaseException as error:
            chaos.saw(error)
            self.rolled_back.add(seq)
            time.sleep(0.005)
            return
        dirty = is_dirty(conn)
        if dirty is not None:
            chaos.violation(f"a borrower was handed a connection that is {dirty}")
        roll = self.rng.random()
        commit_attempted = forgetting = False
        try:
            with conn.cursor() as cur:
                cur.execute("INSERT INTO chaos (worker, seq) VALUES (%s, %s)", (self.number, seq))
                if roll < 0.85:
                    commit_attempted = True
                    conn.commit()
                    self.committed.add(seq)
                    chaos.committed_at(time.monotonic())
                elif roll < 0.92:
                    self.rolled_back.add(seq)  # returned mid-transaction: the pool rolls back
                elif roll < 0.99:
                    self.rolled_back.add(seq)  # returned in a failed transaction
                    with contextlib.suppress(psycopg2.errors.DivisionByZero):
                        cur.execute("SELECT 1 / 0")
                else:
                    # A borrower that forgets its connection, busy in a query past max_lease:
                    # the pool reclaims it (cutting the query) and refills, and the late
                    # putconn below is harmless. Its slot must stay counted until closed.
                    self.rolled_back.add(seq)
                    forgetting = True
                    cur.execute("SELECT pg_sleep(%s)", (MAX_LEASE * 3,))
        except BaseException as error:
            chaos.saw(error)
            (self.unknown if commit_attempted else self.rolled_back).add(seq)
        finally:
            # Kept past max_lease: the pool should have reclaimed it. A fault that ended the
            # query sooner left nothing to reclaim, so that one is not counted.
            if forgetting and time.monotonic() - leased_at >= MAX_LEASE:
                self.forgotten += 1
            try:
                pool.putconn(conn)
            except BaseException as error:
                chaos.violation(f"putconn raised {error!r}")


class Chaos:
    def __init__(self, server: EmbeddedPostgres, seconds: float, seed: int) -> None:
        self.server = server
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.figures = Figures(seed=seed, seconds=seconds, workers=WORKERS, maxconn=MAXCONN)
        self.app = unique_app("chaos")
        self.lock = threading.Lock()
        self.stop_workers = threading.Event()
        self.stop_faults = threading.Event()
        self.errors: Counter[str] = Counter()
        self.violations: list[str] = []
        self.commit_times: list[float] = []
        self.fault_log: list[tuple[str, float, float]] = []  # (kind, start, end)
        self.fault_epoch = 0
        server.execute("ALTER SYSTEM SET synchronous_commit = on")  # a crash keeps commits
        server.execute("SELECT pg_reload_conf()")
        server.execute("CREATE TABLE chaos (worker int, seq int, PRIMARY KEY (worker, seq))")
        self.proxy = TcpProxy(server.host, server.port).start()
        self.pool = pgpool.ThreadedConnectionPool(
            MINCONN,
            MAXCONN,
            pool_dsn(self.proxy.dsn_for(server.dsn), self.app),
            timeout=CHECKOUT_TIMEOUT,
            maintenance_interval=0.2,
            max_lease=MAX_LEASE,
        )
        self.workers = [Worker(self, n, self.rng.randrange(2**32)) for n in range(WORKERS)]

    # -- what threads report ------------------------------------------------------------------

    def saw(self, error: BaseException) -> None:
        with self.lock:
            self.errors[type(error).__name__] += 1
        if not isinstance(error, psycopg2.Error):  # pgpool.PoolError is a psycopg2.Error
            self.violation(f"unclear exception reached a caller: {error!r}")

    def violation(self, what: str) -> None:
        with self.lock:
            if len(self.violations) < 50:
                self.violations.append(what)

    def committed_at(self, moment: float) -> None:
        with self.lock:
            self.commit_times.append(moment)

    # -- the fault injector -------------------------------------------------------------------

    def inject(self) -> None:
        faults = [
            ("kill_all", self._kill_all),
            ("kill_some", self._kill_some),
            ("restart_fast", lambda: self._restart("fast")),
            ("restart_immediate", lambda: self._restart("immediate")),
            ("blackhole", self._blackhole),
            ("drop_links", self.proxy.drop_all),
        ]
        try:
            while not self.stop_faults.wait(self.rng.uniform(0.5, 2.0)):
                kind, fault = self.rng.choice(faults)
                start = time.monotonic()
                self.fault_epoch += 1
                fault()
                self.fault_epoch += 1
                self.fault_log.append((kind, start, time.monotonic()))
        except BaseException as error:
            self.violation(f"the fault injector failed: {error!r}")
        finally:
            self.proxy.restore()
            if not self.server.running:
                self.server.start()

    def _kill_all(self) -> None:
        run_sql(
            self.server.dsn,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE application_name = %s",
            (self.app,),
        )

    def _kill_some(self) -> None:
        run_sql(
            self.server.dsn,
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE application_name = %s AND random() < 0.5",
            (self.app,),
        )

    def _restart(self, mode: Any) -> None:
        self.server.stop(mode)
        time.sleep(self.rng.uniform(0.2, 1.5))
        self.server.start()

    def _blackhole(self) -> None:
        self.proxy.blackhole()
        time.sleep(self.rng.uniform(0.3, 2.0))
        self.proxy.restore()

    # -- the monitor --------------------------------------------------------------------------

    def monitor(self) -> None:
        over_since: float | None = None
        epoch = -1
        next_server_sample = 0.0
        while not self.stop_workers.wait(0.05):
            stats = self.pool.stats()
            if stats.size > MAXCONN or stats.in_use + stats.idle > MAXCONN:
                self.violation(f"pool counts more than maxconn: {stats}")
            self.figures.max_pool_size = max(self.figures.max_pool_size, stats.size)
            now = time.monotonic()
            if now < next_server_sample:
                continue
            next_server_sample = now + 0.25
            try:
                backends = count_backends(self.server.dsn, self.app)
            except psycopg2.Error:
                continue  # the server is down: nothing to count
            f = self.figures
            f.max_server_backends = max(f.max_server_backends, backends)
            # A backend outlives its closed client for a moment (longer behind a black
            # hole, which holds back the goodbye): only a sustained excess is a leak.
            if backends > MAXCONN:
                f.server_samples_over_maxconn += 1
                if over_since is None or epoch != self.fault_epoch:
                    over_since, epoch = now, self.fault_epoch
                elif now - over_since > SUSTAINED:
                    self.violation(f"{backends} server sessions for maxconn {MAXCONN}")
            else:
                over_since = None

    # -- the run ------------------------------------------------------------------------------

    def run(self) -> Figures:
        injector = threading.Thread(target=self.inject, name="chaos-injector", daemon=True)
        monitor = threading.Thread(target=self.monitor, name="chaos-monitor", daemon=True)
        for worker in self.workers:
            worker.start()
        monitor.start()
        injector.start()
        time.sleep(self.seconds)
        self.stop_faults.set()
        injector.join(60)
        assert not injector.is_alive(), "the fault injector hangs"
        # Let the pool heal under load for a moment, then stop the workers.
        wait_for(lambda: self._commits_after(time.monotonic() - 0.5) > 0, 30, "load resumes")
        self.stop_workers.set()
        for thread in [*self.workers, monitor]:
            thread.join(30)
        hung = [t.name for t in [*self.workers, monitor] if t.is_alive()]
        assert not hung, f"threads hang: {hung}"
        self._summarize()
        return self.figures

    def _commits_after(self, moment: float) -> int:
        with self.lock:
            return sum(1 for t in self.commit_times if t > moment)

    def _summarize(self) -> None:
        f = self.figures
        f.committed = sum(len(w.committed) for w in self.workers)
        f.unknown = sum(len(w.unknown) for w in self.workers)
        f.rolled_back = sum(len(w.rolled_back) for w in self.workers)
        f.operations = f.committed + f.unknown + f.rolled_back
        f.errors = dict(self.errors)
        f.faults = dict(Counter(kind for kind, _, _ in self.fault_log))
        f.leases_reclaimed = self.pool.stats().leases_reclaimed
        commits = sorted(self.commit_times)
        for i, (kind, _start, end) in enumerate(self.fault_log):
            next_start = self.fault_log[i + 1][1] if i + 1 < len(self.fault_log) else float("inf")
            first = next((t for t in commits if t > end), None)
            if first is None or first > next_start:
                f.unrecovered_before_next_fault += 1
            else:
                f.recovery_seconds.setdefault(kind, []).append(round(first - end, 3))

    def close(self) -> None:
        self.stop_faults.set()
        self.stop_workers.set()
        self.proxy.restore()
        if not self.pool.closed:
            self.pool.closeall()
        self.proxy.close()


def _verify(chaos: Chaos) -> None:
    pool, server = chaos.pool, chaos.server
    assert not chaos.violations, "\n".join(chaos.violations)
    f = chaos.figures
    assert f.faults and f.committed, f"the run did not test anything: {f}"
    if any(worker.forgotten for worker in chaos.workers):
        assert f.leases_reclaimed, "borrowers kept connections past max_lease: none reclaimed"
    # No slot lost: maxconn connections at once, each a live, distinct session.
    conns = [pool.getconn(timeout=15) for _ in range(MAXCONN)]
    try:
        for conn in conns:
            assert is_dirty(conn) is None
            assert scalar(conn, "SELECT 1") == 1
        pids = {backend_pid(conn) for conn in conns}
        assert len(pids) == MAXCONN
    finally:
        for conn in conns:
            pool.putconn(conn)
    stats = pool.stats()
    assert stats.in_use == 0 and stats.size == MAXCONN, stats
    # No session leaked: once the last closed ones are gone, the server sees exactly these.
    wait_for(lambda: count_backends(server.dsn, chaos.app) == MAXCONN, 15, "server sessions")
    # Committed data is all there; what was never committed is not.
    rows = run_sql(server.dsn, "SELECT worker, seq FROM chaos")
    assert rows is not None
    table = set(rows)
    for worker in chaos.workers:
        mine = {seq for number, seq in table if number == worker.number}
        lost = worker.committed - mine
        assert not lost, f"worker {worker.number}: committed rows missing: {sorted(lost)[:10]}"
        ghosts = mine - worker.committed - worker.unknown
        assert not ghosts, f"worker {worker.number}: rows never committed: {sorted(ghosts)[:10]}"


def _run(server: EmbeddedPostgres, seconds: float) -> None:
    seed = int(os.environ.get("PGPOOL_CHAOS_SEED", random.randrange(2**32)))
    chaos = Chaos(server, seconds, seed)
    try:
        figures = chaos.run()
        print(f"\nchaos figures: {json.dumps(asdict(figures), indent=1)}")
        _report(figures)
        _verify(chaos)
    finally:
        chaos.close()


def _report(figures: Figures) -> None:
    path = os.environ.get("PGPOOL_CHAOS_REPORT")
    if path:
        with open(path, "w") as report:
            json.dump(asdict(figures), report, indent=2)


@pytest.mark.timeout(150)
def test_chaos_short(restartable_server: EmbeddedPostgres) -> None:
    _run(restartable_server, 30.0)


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_chaos_long(restartable_server: EmbeddedPostgres) -> None:
    seconds = float(os.environ.get("PGPOOL_CHAOS_SECONDS", "300"))
    _run(restartable_server, seconds)

"""Many threads on a small pool: nothing lost, nobody served twice, timeouts fire.

Each test is bounded in operations and in time (threads are joined with a deadline), and
asserts outcomes only: how the work interleaves is up to the scheduler.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg2
import pytest
from support import (
    DEADLINE,
    Pools,
    assert_serves_maxconn,
    pools_fixture,
    select_one,
    wait_until,
)

import pgpool


@pytest.fixture
def pools(dsn: str) -> Iterator[Pools]:
    yield from pools_fixture(dsn)


class Holders:
    """Who holds which connection right now: a second holder of one connection is a bug."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[int, int] = {}
        self.violations: list[str] = []

    def take(self, conn: Any) -> None:
        with self._lock:
            owner = self._held.get(id(conn))
            if owner is not None:
                self.violations.append(f"{threading.get_ident()} got a conn {owner} holds")
            self._held[id(conn)] = threading.get_ident()

    def give(self, conn: Any) -> None:
        with self._lock:
            del self._held[id(conn)]


def _run(threads: list[threading.Thread]) -> None:
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE * 3)
        assert not thread.is_alive(), "a thread hung"


@pytest.mark.timeout(120)
def test_many_threads_share_a_small_pool_without_losing_or_sharing(pools: Pools) -> None:
    pool = pools.threaded(0, 4, timeout=DEADLINE, max_connecting=2)
    holders = Holders()
    outcomes: Counter[str] = Counter()
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                conn = pool.getconn()
                holders.take(conn)
                try:
                    assert select_one(conn) == 1
                    action = rng.random()
                    if action < 0.1:
                        conn.cursor().execute("SELECT 1")  # leave a transaction open
                    holders.give(conn)
                    pool.putconn(conn, close=action > 0.95)
                except BaseException:
                    holders.give(conn)
                    raise
                outcomes["done"] += 1
        except BaseException as error:  # reported below; a thread must not die silently
            errors.append(error)

    _run([threading.Thread(target=worker, args=(seed,)) for seed in range(24)])
    assert errors == []
    assert holders.violations == []
    assert outcomes["done"] == 24 * 60
    # A connect the connector started for the last waiters may still be finishing.
    wait_until(lambda: pool.stats().connecting == 0, "the last connect to finish")
    s = pool.stats()
    assert (s.in_use, s.waiting, s.connecting) == (0, 0, 0)
    assert s.size <= pool.maxconn
    assert s.checkouts == 24 * 60
    pool._state.check_invariants()
    assert_serves_maxconn(pool)


@pytest.mark.timeout(120)
def test_timeouts_fire_under_contention_and_lose_nothing(pools: Pools) -> None:
    pool = pools.threaded(1, 2, timeout=0.05)
    holders = Holders()
    outcomes: Counter[str] = Counter()
    errors: list[BaseException] = []
    lock = threading.Lock()

    def worker() -> None:
        try:
            for _ in range(15):
                try:
                    conn = pool.getconn()
                except pgpool.PoolTimeout:
                    with lock:
                        outcomes["timeout"] += 1
                    continue
                holders.take(conn)
                with conn.cursor() as cursor:
                    cursor.execute("SELECT pg_sleep(0.02)")  # hold it long enough to queue
                holders.give(conn)
                pool.putconn(conn)
                with lock:
                    outcomes["served"] += 1
        except BaseException as error:
            errors.append(error)

    _run([threading.Thread(target=worker) for _ in range(12)])
    assert errors == []
    assert holders.violations == []
    assert outcomes["served"] + outcomes["timeout"] == 12 * 15
    assert outcomes["timeout"] > 0, (
        "12 threads on 2 connections held 20 ms each, 50 ms timeouts: some must time out"
    )
    s = pool.stats()
    assert s.timeouts == outcomes["timeout"]
    assert s.checkouts == outcomes["served"]
    assert (s.in_use, s.waiting, s.connecting) == (0, 0, 0)
    assert_serves_maxconn(pool)


@pytest.mark.timeout(120)
def test_closeall_under_load_ends_every_thread_with_a_clear_error(pools: Pools) -> None:
    pool = pools.threaded(2, 3, timeout=DEADLINE)
    started = threading.Barrier(9)
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def worker() -> None:
        started.wait()
        while True:
            try:
                conn = pool.getconn()
                try:
                    select_one(conn)
                finally:
                    pool.putconn(conn)
            except pgpool.PoolClosed:
                with lock:
                    seen["closed"] += 1
                return
            except psycopg2.Error as error:  # its connection was closed under it by closeall
                with lock:
                    seen[type(error).__name__] += 1

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    started.wait()
    pool.closeall()
    for thread in threads:
        thread.join(DEADLINE)
        assert not thread.is_alive(), "a thread hung after closeall"
    assert seen["closed"] == 8  # each thread ended on PoolClosed, whatever it saw before
    s = pool.stats()
    assert (s.idle, s.waiting) == (0, 0)

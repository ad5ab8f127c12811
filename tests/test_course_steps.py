"""The course's own tests: each step's demonstration, and the tests its exercise names.

The tests named by an exercise (docs/learn/*.md, "Exercise") take the course module as an
argument, so that tests/test_course_exercises.py can run them against a mutated copy of
the module and check that they fail.
"""

from __future__ import annotations

import importlib
import inspect
import re
import textwrap
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
from course_support import Probe
from support import DEADLINE, Task, wait_until

from course import (
    step0_why,
    step1_seed,
    step2_queue,
    step3_condition,
    step4_fifo,
    step4b_barging,
    step5_reserve,
    step6_maintained,
)


class FailFirstConnect(psycopg2.extensions.connection):
    """A connection class whose first connect fails (per subclass), like a server restart."""

    failed = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if not type(self).failed:
            type(self).failed = True
            raise psycopg2.OperationalError("connection refused (first attempt, on purpose)")
        super().__init__(*args, **kwargs)


def fail_first_connect() -> type[FailFirstConnect]:
    return type("FailOnce", (FailFirstConnect,), {"failed": False})


# -- tests named by the exercises -----------------------------------------------------------


@pytest.mark.parametrize("module", [step0_why])
def test_nopool_closes_what_it_opens(dsn: str, module: ModuleType) -> None:
    probe = Probe()
    pool = module.NoPool(0, 1, dsn, connection_factory=probe.factory)
    for _ in range(3):
        pool.putconn(pool.getconn())
    assert probe.opened == 3
    try:
        assert probe.open == 0, "putconn left connections open"
    finally:
        probe.close_all()


@pytest.mark.parametrize("module", [step1_seed])
def test_dbhelper_returns_its_connection(dsn: str, module: ModuleType) -> None:
    helper = module.DBHelper(dsn)
    try:
        for _ in range(5):  # more than its 3 connections: each must have come back
            with helper.get_resource() as (cursor, _conn):
                cursor.execute("SELECT 1 AS one")
                assert cursor.fetchone() == {"one": 1}
    finally:
        helper.shutdown_connection_pool()


@pytest.mark.parametrize("module", [step2_queue])
def test_queue_pool_failed_connect_gives_its_token_back(dsn: str, module: ModuleType) -> None:
    pool = module.QueuePool(0, 1, dsn, connection_factory=fail_first_connect())
    try:
        with pytest.raises(psycopg2.OperationalError):
            pool.getconn()
        conn = pool.getconn(timeout=0.5)  # the server is back: the one slot must be free
        pool.putconn(conn)
    finally:
        pool.closeall()


@pytest.mark.parametrize("module", [step5_reserve, step6_maintained])
def test_failed_connect_frees_its_slot(dsn: str, module: ModuleType) -> None:
    cls = getattr(module, "MaintainedPool", None) or module.ReservePool
    pool = cls(0, 1, dsn, connection_factory=fail_first_connect())
    try:
        with pytest.raises(psycopg2.OperationalError):
            pool.getconn()
        conn = pool.getconn(timeout=0.5)
        pool.putconn(conn)
    finally:
        pool.closeall()


@pytest.mark.parametrize(
    ("module", "cls"), [(step4_fifo, "FifoPool"), (step5_reserve, "ReservePool")]
)
def test_handoff_survives_a_slow_ring(
    dsn: str, module: ModuleType, cls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The woken waiter runs as soon as its bell rings: what it needs must be there first.

    The ring is made slow (the ringer sleeps after releasing the bell), so the waiter
    certainly runs before the ringer's next statement: if the connection is handed over
    after the ring, the waiter returns without it.
    """

    class SlowRing(module.Waiter):  # type: ignore[name-defined,misc]
        def ring(self) -> None:
            super().ring()
            time.sleep(0.2)  # the ringer yields the GIL: the woken waiter runs now

    monkeypatch.setattr(module, "Waiter", SlowRing)
    pool = getattr(module, cls)(0, 1, dsn)
    try:
        mine = pool.getconn()
        waiter = Task(pool.getconn, 5.0)
        wait_until(lambda: pool.waiting == 1, "the second caller to queue")
        pool.putconn(mine)
        served = waiter.result()
        assert served is mine, f"the woken waiter returned {served!r}"
        pool.putconn(served)
    finally:
        pool.closeall()


@pytest.mark.parametrize("module", [step4b_barging])
def test_barging_pool_serves_a_starving_waiter(dsn: str, module: ModuleType) -> None:
    """A thread that returns its connection and asks again at once wins every race while
    it holds the interpreter; once the waiter has waited `patience`, it is served anyway."""
    from course_support import switch_interval

    pool = module.BargingPool(0, 1, dsn, patience=0.05)

    def served_then_return() -> Any:
        # Longer than the loop below runs: a waiter never served must end in the assertion
        # that says so, not in its own PoolTimeout (the exercise check counts on that).
        conn = pool.getconn(timeout=DEADLINE)
        pool.putconn(conn)
        return conn

    try:
        mine = pool.getconn()
        waiter = Task(served_then_return)
        wait_until(lambda: pool.waiting == 1, "the second caller to queue")
        give_up = time.monotonic() + DEADLINE / 2  # served after `patience`: ends a failure
        with switch_interval(1.0):  # the barging thread keeps the GIL until it sleeps
            while not waiter.done and time.monotonic() < give_up:
                pool.putconn(mine)
                mine = pool.getconn(timeout=5.0)  # at once: it barges, unless one starves
                time.sleep(0.001)  # holding it: the woken waiter finds nothing idle
        assert waiter.done, "the waiter was never served: the barging thread won every race"
        assert waiter.result() is mine
        pool.putconn(mine)
    finally:
        pool.closeall()


# -- the demonstrations, small -------------------------------------------------------------


def test_step0_measures_both_ways(dsn: str) -> None:
    fresh, reused = step0_why.measure(dsn, rounds=3)
    assert fresh > 0 and reused > 0


def test_step1_faults(dsn: str) -> None:
    assert "PoolError(connection pool exhausted)" in step1_seed.fault_exhausted(dsn)
    assert "behind a 50 ms connect" in step1_seed.fault_connect_under_lock(dsn, delay=0.05)
    # (1, 3): the first round opens 2, and each round closes 2 and opens 2 again.
    assert step1_seed.fault_churn(dsn, rounds=5) == "15 checkouts, 11 connects (3 would do)"


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        (step2_queue, "two callers, one connection: True"),
        (step3_condition, "returned, asked again, got it back: True | waiter served: []"),
        (step6_maintained, "3 leases forgotten for 0.3 s (max_lease 0.2), reclaimed: True"),
    ],
)
def test_demonstration_shows_the_fault(
    module: ModuleType,
    expected: str,
    dsn: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("PGPOOL_DSN", dsn)
    module.main()
    assert expected in capsys.readouterr().out


def test_step4_contention_runs(dsn: str) -> None:
    from course.measure import contention

    line = contention(step4_fifo.FifoPool, dsn, threads=4, conns=2, seconds=0.2)
    assert "q/s" in line


def test_step5_spike_opens_at_most_max_connecting(dsn: str) -> None:
    """Counted, not timed: the most connects in flight at once. (The total once stood in for
    it, "at most 2 connects", which a loaded machine broke: when the first two callers were
    served late, a third connect started after they ended, within max_connecting.)"""
    lock = threading.Lock()
    in_flight = [0, 0]  # now, most at once

    class Slow(psycopg2.extensions.connection):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            with lock:
                in_flight[0] += 1
                in_flight[1] = max(in_flight)
            try:
                time.sleep(0.05)  # slow enough that six callers pile up behind the connects
                super().__init__(*args, **kwargs)
            finally:
                with lock:
                    in_flight[0] -= 1

    pool = step5_reserve.ReservePool(0, 6, dsn, connection_factory=Slow, max_connecting=2)
    try:
        callers = [Task(_one_query, pool) for _ in range(6)]
        for caller in callers:
            caller.result()
        assert 1 <= in_flight[1] <= 2, f"{in_flight[1]} connects at once, max_connecting 2"
    finally:
        pool.closeall()


def _one_query(pool: Any) -> None:
    conn = pool.getconn(timeout=DEADLINE)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1")
    finally:
        pool.putconn(conn)


def test_step5_spike_demonstration_runs(dsn: str) -> None:
    from course.measure import spike

    line = spike(step5_reserve.ReservePool, dsn, callers=6, delay=0.05)
    assert re.fullmatch(r"6 callers served in +\d+ ms with \d+ connects; .* ms", line), line


def test_pool_locking_needs_one_more_than_the_threads_hold(dsn: str) -> None:
    from course.pool_locking import nested_checkouts

    # 4 threads each holding 2: Tn x (Cm - 1) + 1 = 5. With 4, every connection is held
    # by a thread waiting for another: only a timeout gets anyone out.
    served, timed_out = nested_checkouts(dsn, threads=4, held=2, maxconn=4, timeout=0.3)
    assert timed_out >= 1 and served + timed_out == 4
    assert nested_checkouts(dsn, threads=4, held=2, maxconn=5, timeout=30.0) == (4, 0)


def test_switch_interval_is_restored() -> None:
    import sys

    from course_support import switch_interval

    before = sys.getswitchinterval()
    with switch_interval(1.0):
        assert sys.getswitchinterval() == 1.0
    assert sys.getswitchinterval() == before


# -- the chapters quote the code as it is ---------------------------------------------------

LEARN = Path(__file__).resolve().parent.parent / "docs" / "learn"
QUOTE = re.compile(
    r"<!-- quote: (?P<path>\S+) (?P<name>[\w.]+) -->\n(?:<!-- skip: next -->\n)?"
    r"```python\n(?P<code>.*?)```",
    re.DOTALL,
)


def quotes() -> list[tuple[str, str, str, str]]:
    found = []
    for chapter in sorted(LEARN.glob("0*.md")):
        for match in QUOTE.finditer(chapter.read_text(encoding="utf-8")):
            found.append((chapter.name, match["path"], match["name"], match["code"]))
    return found


def test_chapters_quote_code() -> None:
    # Guards the pattern: were it to match nothing, the next test would check nothing.
    assert len(quotes()) >= 10


@pytest.mark.parametrize(
    ("chapter", "path", "name", "code"), quotes(), ids=lambda v: v if "\n" not in v else ""
)
def test_quote_matches_the_code(chapter: str, path: str, name: str, code: str) -> None:
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    obj: Any = module
    for part in name.split("."):
        obj = getattr(obj, part)
    assert code == textwrap.dedent(inspect.getsource(obj)), f"{chapter}: {name} differs"


def test_every_chapter_has_a_diagram_and_an_exercise() -> None:
    chapters = sorted(LEARN.glob("0*.md"))
    assert [c.name.partition("-")[0] for c in chapters] == [
        *(f"0{n}" for n in range(5)),
        "04b",
        *(f"0{n}" for n in range(5, 8)),
    ]
    for chapter in chapters:
        text = chapter.read_text(encoding="utf-8")
        assert "```mermaid" in text, f"{chapter.name}: no diagram"
        assert "\n## Exercise\n" in text, f"{chapter.name}: no exercise"


def test_chapter_7_reads_pgpool_as_it_is() -> None:
    """Every name chapter 7's reading order points at exists in pgpool (or the stdlib)."""
    import os
    import threading

    import pgpool
    import pgpool.base
    import pgpool.connection
    import pgpool.maintenance
    import pgpool.options
    import pgpool.pool
    import pgpool.state
    import pgpool.watchdog

    text = (LEARN / "07-pgpool.md").read_text(encoding="utf-8")
    table = text.partition("| the course | pgpool |")[2].partition("\n\n")[0]
    reading = text.partition("## The reading order")[2].partition("```mermaid")[0]
    right_column = " ".join(row.split("|")[2] for row in table.splitlines()[2:])
    names = set(re.findall(r"`([A-Za-z_][\w.]*)(?:\(\))?`", reading + right_column))
    places: list[Any] = [
        pgpool,
        pgpool.state,
        pgpool.pool,
        pgpool.base,
        pgpool.maintenance,
        pgpool.connection,
        pgpool.watchdog,
        pgpool.options,
        pgpool.state.PoolState,
        pgpool.pool.AbstractConnectionPool,
        pgpool.ThreadedConnectionPool,
        threading,
        os,
    ]
    options = set(pgpool.options.PoolOptions._fields)
    slot_fields = set(pgpool.state.Slot.__slots__)

    def exists(name: str) -> bool:
        if name.endswith(".py"):
            return (LEARN.parent.parent / "pgpool" / name).is_file()
        head, _, rest = name.partition(".")
        if not rest:
            known = options | slot_fields
            return name in known or any(hasattr(place, name) for place in places)
        owner = next((getattr(p, head) for p in places if hasattr(p, head)), None)
        return owner is not None and (hasattr(owner, rest) or rest in slot_fields)

    missing = sorted(name for name in names if not exists(name))
    assert len(names) > 30
    assert not missing, f"docs/learn/07-pgpool.md names what pgpool no longer has: {missing}"

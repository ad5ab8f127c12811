"""pgpool under gevent: run as a script, in a process of its own (monkey-patching is global).

    python tests/gevent_scenarios.py DSN

Patches first, as every gevent program must (`monkey.patch_all()` before anything imports
threading, then psycogreen so that libpq waits yield to the hub instead of blocking it),
then imports pgpool, runs each scenario and prints one JSON object per line with what it
saw. tests/test_gevent.py runs it and judges the figures; docs/compat.md has the recipe.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402  (everything below must see the patched modules)
import os  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import psycogreen.gevent  # noqa: E402

psycogreen.gevent.patch_psycopg()

import pgpool  # noqa: E402

DSN = sys.argv[1]
GREENLETS, CONNS, QUERY_SECONDS = 40, 4, 0.05


def report(scenario: str, **figures: Any) -> None:
    print(json.dumps({"scenario": scenario, **figures}), flush=True)


def query(conn: Any, sql: str) -> Any:
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchone()[0]


def concurrency() -> None:
    """40 greenlets x 50 ms queries on 4 connections: ideal 0.5 s, serial 2 s."""
    with pgpool.ThreadedConnectionPool(CONNS, CONNS, DSN, application_name="gevent") as pool:
        in_flight, peak = 0, 0

        def work() -> None:
            nonlocal in_flight, peak
            with pool.connection() as conn:
                in_flight += 1  # greenlets switch only at I/O: no lock needed for counting
                peak = max(peak, in_flight)
                query(conn, f"SELECT pg_sleep({QUERY_SECONDS})")
                in_flight -= 1

        start = time.monotonic()
        gevent.joinall([gevent.spawn(work) for _ in range(GREENLETS)], raise_error=True)
        elapsed = time.monotonic() - start
        report(
            "concurrency",
            elapsed=elapsed,
            ideal=GREENLETS / CONNS * QUERY_SECONDS,
            serial=GREENLETS * QUERY_SECONDS,
            peak_in_flight=peak,
            opened=pool.stats().connections_opened,
        )


def timeout() -> None:
    """A greenlet waiting for the only connection gives up at its deadline, while the holder
    still runs its query: the wait yields to the hub instead of blocking it."""
    with pgpool.ThreadedConnectionPool(1, 1, DSN) as pool:
        holding, release = gevent.event.Event(), gevent.event.Event()

        def hold() -> None:
            # Busy until told: a fixed pg_sleep(0.5) could end before the waiter's 0.1 s
            # deadline was noticed on a loaded machine, and serve the waiter.
            with pool.connection() as conn:
                holding.set()
                while not release.is_set():
                    query(conn, "SELECT pg_sleep(0.02)")

        holder = gevent.spawn(hold)
        holding.wait()
        start = time.monotonic()
        try:
            pool.getconn(timeout=0.1)
            raised = None
        except pgpool.PoolTimeout as error:
            raised = type(error).__name__
        waited = time.monotonic() - start
        holder_busy = not holder.ready()
        release.set()
        holder.get()
        report("timeout", raised=raised, waited=waited, holder_still_busy=holder_busy)


def reaping() -> None:
    """The maintenance thread, a greenlet here, closes idle connections past max_idle."""
    with pgpool.ThreadedConnectionPool(
        0, CONNS, DSN, max_idle=0.2, maintenance_interval=0.05
    ) as pool:
        conns = [pool.getconn() for _ in range(CONNS)]
        for conn in conns:
            pool.putconn(conn)
        idle_before = pool.stats().idle
        deadline = time.monotonic() + 10
        while pool.stats().idle and time.monotonic() < deadline:
            gevent.sleep(0.02)
        report(
            "reaping",
            idle_before=idle_before,
            idle_after=pool.stats().idle,
            reaped=pool.stats().idle_reaped,
            maintenance_is_greenlet=_is_greenlet(pool),
        )


def _is_greenlet(pool: Any) -> bool:
    """Under gevent a "thread" is a greenlet on the main OS thread."""
    thread = pool._connector._thread  # private: only to show what the thread became
    return bool(thread.native_id == threading.main_thread().native_id)


def watchdog() -> None:
    """The watchdog (a greenlet too) still ends a query that overruns its deadline by cutting
    the socket: what bounds a health check on a silent network."""
    from pgpool import watchdog as dog  # internal: the health check's deadline

    with pgpool.ThreadedConnectionPool(1, 1, DSN) as pool:
        conn = pool.getconn()
        start = time.monotonic()
        alarm = dog.arm(conn, 0.1)
        try:
            query(conn, "SELECT pg_sleep(5)")
            error = None
        except Exception as caught:
            error = type(caught).__name__
        report("watchdog", error=error, cut=alarm.disarm(), elapsed=time.monotonic() - start)
        pool.putconn(conn)  # broken: the pool discards it
        report("watchdog_after", serves=query(pool.getconn(), "SELECT 1"))


def fork() -> None:
    """A pool made before os.fork() (gunicorn's preload_app): the child gets connections of
    its own, and the parent's keep working."""
    with pgpool.ThreadedConnectionPool(1, 2, DSN) as pool:
        with pool.connection() as conn:
            parent_pid = query(conn, "SELECT pg_backend_pid()")
        read, write = os.pipe()
        child = os.fork()
        if child == 0:  # the child: report through the pipe, then end as a program does
            try:
                with pool.connection() as conn:
                    figures = {"child_backend": query(conn, "SELECT pg_backend_pid()")}
            except BaseException as error:
                figures = {"child_error": repr(error)}
            os.write(write, json.dumps(figures).encode())
            # sys.exit, not os._exit: the pool's `with` and the exit handlers run, and a
            # child that hangs in them is caught below.
            sys.exit(0)
        os.close(write)
        status = _wait_for_child(child, 15.0)
        child_figures = json.loads(os.read(read, 4096) or b"{}")
        os.close(read)
        with pool.connection() as conn:
            parent_after = query(conn, "SELECT pg_backend_pid()")
        report(
            "fork",
            parent_backend=parent_pid,
            parent_backend_after=parent_after,
            child_status=status,
            **child_figures,
        )


def _wait_for_child(pid: int, seconds: float) -> int | str:
    """The child's wait status, or "hung" (then it is killed) if it has not ended in time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    return "hung"


SCENARIOS: dict[str, Callable[[], None]] = {
    "concurrency": concurrency,
    "timeout": timeout,
    "reaping": reaping,
    "watchdog": watchdog,
    "fork": fork,
}

if __name__ == "__main__":
    for name in sys.argv[2:] or SCENARIOS:
        SCENARIOS[name]()

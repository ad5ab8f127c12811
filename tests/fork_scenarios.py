"""Fork scenarios: run as a script, so that forked children end the way applications' do.

    python tests/fork_scenarios.py SCENARIO DSN [ARGUMENT]

A child forked inside pytest could only end with `os._exit`: anything else unwinds into
pytest, which would go on running the session in the child. But `os._exit` skips exactly
what an application's exit runs, and where a fork bug hides: atexit hooks, `weakref`
finalizers, the joins of `threading._shutdown`. So the parent here is a plain script. Its
children end with `sys.exit(0)` (the interpreter unwinds and finalizes), by returning from
a multiprocessing target or calling `sys.exit` in one (multiprocessing's own exit), and
after `closeall()`, as a gunicorn `worker_exit` hook does.

Each child reports what it saw through a pipe, as JSON, before it ends; the parent gives
it `CHILD_DEADLINE` seconds to exit (generous: it is not timed, only required to end) and
kills it if it does not. The scenario prints one JSON object with what it saw;
tests/test_fork.py judges it.
"""

from __future__ import annotations

import contextlib
import gc
import json
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import psycopg2
from faultsupport import backend_pid, connector_threads, scalar

import pgpool
from pgpool.helpers import DBHelper

DSN = sys.argv[2] if __name__ == "__main__" else ""
CHILD_DEADLINE = 30.0
# How children end: "exit" is sys.exit(0) in a child of os.fork(); "mp-return" and
# "mp-exit" a multiprocessing (fork context) target that returns or calls sys.exit(0).
ENDINGS = ("exit", "mp-return", "mp-exit")


class Child:
    """A forked child: `wait()` for it to exit (or kill it) and read what it reported."""

    def __init__(self, read_end: int, pid: int = 0, process: Any = None) -> None:
        self.read_end = read_end
        self.pid = pid
        self.process = process

    def wait(self, deadline: float) -> dict[str, Any]:
        """{"exitcode": ..., "hung": bool, "report": what the body returned or raised}."""
        hung = False
        if self.process is not None:
            self.process.join(max(0.0, deadline - time.monotonic()))
            if self.process.is_alive():
                hung = True
                self.process.kill()
                self.process.join()
            exitcode = self.process.exitcode
        else:
            while True:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() >= deadline:
                    hung = True
                    os.kill(self.pid, signal.SIGKILL)
                    _, status = os.waitpid(self.pid, 0)
                    break
                time.sleep(0.02)
            exitcode = os.waitstatus_to_exitcode(status)
        chunks = []
        while chunk := os.read(self.read_end, 65536):
            chunks.append(chunk)
        os.close(self.read_end)
        report = json.loads(b"".join(chunks) or b'{"error": "the child reported nothing"}')
        return {"exitcode": exitcode, "hung": hung, "report": report}


def fork_child(body: Callable[[], Any], ending: str = "exit") -> Child:
    """Fork a child that runs `body`, reports its result, and ends as `ending` says."""
    read_end, write_end = os.pipe()
    if ending.startswith("mp-"):
        context = multiprocessing.get_context("fork")
        process = context.Process(target=_mp_target, args=(body, write_end, ending))
        process.start()
        os.close(write_end)
        return Child(read_end, process=process)
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _run_and_report(body, write_end)
        sys.exit(0)  # unwinds this script's frames and finalizes, as an application's exit
    os.close(write_end)
    return Child(read_end, pid=pid)


def _mp_target(body: Callable[[], Any], write_end: int, ending: str) -> None:
    _run_and_report(body, write_end)
    if ending == "mp-exit":
        sys.exit(0)


def _run_and_report(body: Callable[[], Any], write_end: int) -> None:
    try:
        payload = {"ok": True, "result": body()}
    except BaseException:
        # With every thread's stack: a child whose getconn timed out is waiting on its
        # connector, and the connector's stack says where it is stuck.
        payload = {"ok": False, "error": traceback.format_exc(), "threads": _stacks()}
    os.write(write_end, json.dumps(payload).encode())
    os.close(write_end)


def _stacks() -> dict[str, str]:
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    return {
        names.get(ident, str(ident)): "".join(traceback.format_stack(frame))
        for ident, frame in sys._current_frames().items()
    }


def _socket_of(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")  # "socket:[inode]": the socket, not the number


def _sockets() -> set[str]:
    """Every socket this process holds a descriptor of."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            found.add(_socket_of(int(name)))
    return found


def wait_all(children: list[Child]) -> list[dict[str, Any]]:
    deadline = time.monotonic() + CHILD_DEADLINE
    return [child.wait(deadline) for child in children]


class Churn:
    """Threads that check connections out and back in a loop, so that a fork lands while
    they hold the pool's lock (or the helper's), as it does in a busy server process."""

    def __init__(self, use: Callable[[], None], threads: int = 4) -> None:
        self.stop = threading.Event()
        self.rounds = 0
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._loop, args=(use,)) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def _loop(self, use: Callable[[], None]) -> None:
        while not self.stop.is_set():
            try:
                use()
                self.rounds += 1
            except Exception as error:
                self.errors.append(repr(error))
                return

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        for thread in self.threads:
            thread.join(10)
        return {"rounds": self.rounds, "churn_errors": self.errors}


def fork_while_busy(body: Callable[[], Any], ending: str, children: int) -> list[Child]:
    forked = []
    for _ in range(children):
        time.sleep(random.uniform(0.005, 0.03))  # let the churn run: forks land anywhere
        forked.append(fork_child(body, ending))
    return forked


# -- scenarios ----------------------------------------------------------------------------


def endings(argument: str) -> dict[str, Any]:
    """Children forked while 4 threads churn the pool use it and end as `argument` says
    ("exit", "mp-return", "mp-exit"; "closeall+" first calls closeall(), as gunicorn's
    worker_exit hook does). Every child must exit; the parent's pool must not notice."""
    closeall = argument.startswith("closeall+")
    ending = argument.removeprefix("closeall+")
    pool = pgpool.ThreadedConnectionPool(2, 4, DSN, timeout=10)

    def use() -> None:
        pool.putconn(pool.getconn())

    def child() -> dict[str, Any]:
        conn = pool.getconn(timeout=10)
        pid = scalar(conn, "SELECT pg_backend_pid()")
        pool.putconn(conn)
        if closeall:
            pool.closeall()
        return {"pid": pid}

    churn = Churn(use)
    outcomes = wait_all(fork_while_busy(child, ending, children=6))
    figures = churn.finish()
    # The parent's pool goes on as if nothing happened: its connections still answer.
    conns = [pool.getconn() for _ in range(pool.stats().size)]
    parent_pids = [scalar(conn, "SELECT pg_backend_pid()") for conn in conns]
    for conn in conns:
        pool.putconn(conn)
    stats = pool.stats()
    pool.closeall()
    return {
        "children": outcomes,
        "parent_pids": parent_pids,
        "failed_checks": stats.failed_checks,
        "broken_returns": stats.broken_returns,
        **figures,
    }


def dbhelper(argument: str) -> dict[str, Any]:
    """DBHelper creates its pool under a lock of its own, and closes it in an atexit hook
    that takes that lock. Children forked while a parent thread creates the pool (here the
    connect is held until the forks are done) use the helper and end: neither the use nor
    the exit may wait for the lock that thread held at the fork."""
    parent = os.getpid()
    connecting, forked = threading.Event(), threading.Event()

    def connect(*args: Any, **kwargs: Any) -> Any:
        if os.getpid() == parent:
            connecting.set()
            forked.wait(10)
        return psycopg2.connect(*args, **kwargs)

    helper = DBHelper(DSN, minconn=1, maxconn=4, connector=connect)
    helper.shutdown_connection_pool()  # created once and closed: its atexit hook is set
    creator = threading.Thread(target=lambda: helper.pool)  # creates it again
    creator.start()
    connecting.wait(10)

    def child() -> dict[str, Any]:
        with helper.get_resource() as (cursor, _):
            cursor.execute("SELECT pg_backend_pid() AS pid")
            return {"pid": cursor.fetchone()["pid"]}

    children = [fork_child(child, argument) for _ in range(2)]
    forked.set()
    outcomes = wait_all(children)
    creator.join(10)
    helper.shutdown_connection_pool()
    return {"children": outcomes}


def django_registry(argument: str) -> dict[str, Any]:
    """The Django backend's registry makes each pool under a lock of its own. Children
    forked while a parent thread is making one (held here until the forks are done) check
    out from the registry and end: the child must not wait for the lock that thread held."""
    from pgpool.contrib.django import registry

    parent = os.getpid()
    making, forked = threading.Event(), threading.Event()

    def make() -> pgpool.ThreadedConnectionPool:
        if os.getpid() == parent:
            making.set()
            forked.wait(10)
        return pgpool.ThreadedConnectionPool(1, 2, DSN, open=False)

    maker = threading.Thread(target=registry.pool_for, args=("default", "key", make))
    maker.start()
    making.wait(10)

    def child() -> dict[str, Any]:
        pool = registry.pool_for("default", "key", make)
        with pool.connection() as conn:
            pid = scalar(conn, "SELECT pg_backend_pid()")
        registry.close_pools()
        return {"pid": pid}

    children = [fork_child(child, argument) for _ in range(2)]
    forked.set()
    outcomes = wait_all(children)
    maker.join(10)
    registry.close_pools()
    return {"children": outcomes}


def own_connections(argument: str) -> dict[str, Any]:
    """The child gets connections of its own; the parent's, one checked out and one idle at
    the fork, survive even the child closing its copies of them explicitly."""
    cls = getattr(pgpool, argument)
    pool = cls(2, 4, DSN)
    held = pool.getconn()
    idle = pool.getconn()
    pool.putconn(idle)  # one connection checked out, one idle, at the fork
    parent_pids = [backend_pid(held), backend_pid(idle)]
    parent_sockets = {_socket_of(held.fileno()), _socket_of(idle.fileno())}

    def child() -> dict[str, Any]:
        # Nothing in the child refers to the parent's sockets any more: the connections'
        # descriptors point at /dev/null, and the pool's duplicates (stopper.py) are closed.
        shared = len(parent_sockets & _sockets())
        conn = pool.getconn(timeout=10)
        second = pool.getconn(timeout=10)  # the inherited idle one must not show up
        pids = [scalar(c, "SELECT pg_backend_pid()") for c in (conn, second)]
        inherited = [c is held or c is idle for c in (conn, second)]
        pool.putconn(conn)
        pool.putconn(second)
        # The harshest thing a child can do with what it inherited: close it all.
        held.close()
        idle.close()
        pool.closeall()
        return {"pids": pids, "inherited": inherited, "shared_sockets": shared}

    (outcome,) = wait_all([fork_child(child)])
    gc.collect()
    again = pool.getconn()
    figures = {
        "children": [outcome],
        "parent_pids": parent_pids,
        "held_pid_after": scalar(held, "SELECT pg_backend_pid()"),
        "idle_came_back": again is idle,
        "idle_pid_after": scalar(again, "SELECT pg_backend_pid()"),
    }
    pool.putconn(again)
    pool.putconn(held)
    pool.closeall()
    return figures


def collected(argument: str) -> dict[str, Any]:
    """The child lets the pool and its connections be garbage-collected. (psycopg2 itself
    skips the Terminate when a connection is deallocated in another process than the one
    that opened it; an explicit close() has no such guard: see own_connections.)"""
    pool = pgpool.ThreadedConnectionPool(2, 3, DSN, health_check_after=60)
    conns = [pool.getconn(), pool.getconn()]
    pids = [backend_pid(c) for c in conns]
    pool.putconn(conns[1])  # one checked out, one idle
    # Nothing but `holder` refers to the pool and its connections, in parent and child.
    holder: dict[str, Any] = {"pool": pool, "held": conns[0]}
    del pool, conns

    def child() -> None:
        holder.clear()  # the child's copies become garbage ...
        gc.collect()  # ... and are collected: the pool, its idle and its checked-out one

    (outcome,) = wait_all([fork_child(child)])
    pool, held = holder["pool"], holder["held"]
    idle = pool.getconn()
    figures = {
        "children": [outcome],
        "pids": pids,
        "after": [scalar(held, "SELECT pg_backend_pid()"), scalar(idle, "SELECT pg_backend_pid()")],
    }
    pool.putconn(idle)
    figures["failed_checks"] = pool.stats().failed_checks
    pool.putconn(held)
    pool.closeall()
    return figures


def parent_waiter(argument: str) -> dict[str, Any]:
    """At the fork a parent thread is queued in getconn: the child starts with a fresh lock
    and fresh bookkeeping, so it neither deadlocks nor sees the parent's queue."""
    pool = pgpool.ThreadedConnectionPool(1, 1, DSN, timeout=20)
    held = pool.getconn()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(pool.getconn()))
    waiter.start()
    deadline = time.monotonic() + 10
    while pool.stats().waiting != 1 and time.monotonic() < deadline:
        time.sleep(0.01)

    def child() -> dict[str, Any]:
        stats = pool.stats()
        conn = pool.getconn(timeout=5)
        pid = scalar(conn, "SELECT pg_backend_pid()")
        pool.putconn(conn)
        return {"waiting": stats.waiting, "in_use": stats.in_use, "pid": pid}

    (outcome,) = wait_all([fork_child(child)])
    parent_pid = backend_pid(held)
    pool.putconn(held)
    waiter.join(10)
    figures = {
        "children": [outcome],
        "parent_pid": parent_pid,
        "waiter_got_it": bool(got) and got[0] is held,
        "still_answers": scalar(held, "SELECT 1") == 1,
    }
    pool.putconn(held)
    pool.closeall()
    return figures


def maintenance(argument: str) -> dict[str, Any]:
    """The child's pool has a connector of its own, which refills it with its own sessions."""
    pool = pgpool.ThreadedConnectionPool(2, 3, DSN, maintenance_interval=0.1)
    name = f"pgpool-connector-{pool.name}"
    held = [pool.getconn(), pool.getconn()]  # both checked out across the fork

    def child() -> dict[str, Any]:
        mine = [t for t in connector_threads() if t.name == name and t.is_alive()]
        deadline = time.monotonic() + 10
        while pool.stats().idle < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        refilled = pool.stats().idle
        conns = [pool.getconn(timeout=5) for _ in range(2)]
        pids = [scalar(c, "SELECT pg_backend_pid()") for c in conns]
        for c in conns:
            pool.putconn(c)
        pool.closeall()
        return {"connectors": len(mine), "refilled": refilled, "pids": pids}

    (outcome,) = wait_all([fork_child(child)])
    figures = {
        "children": [outcome],
        "parent_pids": [backend_pid(c) for c in held],
        "still_answer": [scalar(c, "SELECT 1") == 1 for c in held],
    }
    for conn in held:
        pool.putconn(conn)
    pool.closeall()
    return figures


def unopened(argument: str) -> dict[str, Any]:
    """The pre-fork recipe psycopg_pool users know: the master makes the pool with
    `open=False` (no connection, no thread to inherit) and each worker calls `open()`,
    as a gunicorn `post_fork` hook would."""
    pool = pgpool.ThreadedConnectionPool(2, 3, DSN, open=False)
    name = f"pgpool-connector-{pool.name}"
    connector_before = any(t.name == name for t in connector_threads())

    def child() -> dict[str, Any]:
        pool.open(wait=True, timeout=10)
        connector = any(t.name == name for t in connector_threads())
        with pool.connection() as conn:
            pid = scalar(conn, "SELECT pg_backend_pid()")
        size = pool.stats().size
        pool.closeall()
        return {"connector": connector, "pid": pid, "size": size}

    (outcome,) = wait_all([fork_child(child)])
    size_after = pool.stats().size  # the master still holds nothing ...
    pool.open(wait=True, timeout=10)  # ... and can itself be opened later (or never)
    figures = {
        "children": [outcome],
        "connector_before": connector_before,
        "size_after": size_after,
        "size_opened": pool.stats().size,
    }
    pool.closeall()
    return figures


SCENARIOS = {
    f.__name__: f
    for f in (
        endings,
        dbhelper,
        django_registry,
        own_connections,
        collected,
        parent_waiter,
        maintenance,
        unopened,
    )
}

if __name__ == "__main__":
    import warnings

    # Python 3.12+ warns that forking a multi-threaded process may deadlock the child: that
    # is the hazard under test.
    warnings.simplefilter("ignore", DeprecationWarning)
    parent = os.getpid()
    figures = SCENARIOS[sys.argv[1]](sys.argv[3] if len(sys.argv) > 3 else "")
    assert os.getpid() == parent  # a child ends in fork_child, never gets here
    print(json.dumps(figures), flush=True)

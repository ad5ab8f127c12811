"""Why pgpool holds its lock with ``with`` and not ``acquire()`` / ``try`` / ``finally``.

psycopg2.pool writes each critical section as::

    self._lock.acquire()
    try:
        ...
    finally:
        self._lock.release()

pgpool writes ``with self._lock: ...``. On CPython 3.11 the second costs more: about
0.06 us more per critical section, so about 0.13 us more per checkout and return (the cycle
scenario times both idioms around a bare list, the "lock floors"). pgpool pays it because
the first has a gap. A signal handler that raises (Ctrl-C's KeyboardInterrupt, or a task
queue's soft time limit) runs between two bytecodes, and one of those points is just after
``acquire()`` returns, before the ``try`` begins. An exception raised there leaves the lock
held with nobody to release it, and every later getconn and putconn hangs. ``with``
acquires the lock and enters its block in one step, with no such point between them.

This script shows it: one thread signals the main thread every few microseconds while
the main thread takes and releases a lock in a loop with each idiom; after each
interrupt it looks whether the lock was left held. With ``--dsn`` it then does the same
around psycopg2.pool's and pgpool's own getconn and putconn. Run it with::

    .venv/bin/python -m benchmarks.lock_idiom [SECONDS] [--dsn DSN]

Main thread only (Python runs signal handlers there); POSIX only (SIGUSR1).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class _Interrupt(Exception):
    """What the signal handler raises, as Ctrl-C raises KeyboardInterrupt."""


def _with(lock: threading.Lock) -> None:
    while True:
        with lock:
            pass


def _acquire_try(lock: threading.Lock) -> None:
    while True:
        lock.acquire()
        try:
            pass
        finally:
            lock.release()


IDIOMS: dict[str, Callable[[threading.Lock], None]] = {
    "with": _with,
    "acquire/try": _acquire_try,
}


class _Armed:
    """Whether the handler raises. Switched by a plain assignment, not an Event's set() and
    clear(): those are calls, after which a signal is handled, so disarming in an except
    clause could itself be interrupted; an assignment cannot."""

    __slots__ = ("on",)

    def __init__(self) -> None:
        self.on = False


@contextmanager
def _signals() -> Iterator[_Armed]:
    """While inside: a thread sends this process SIGUSR1 every ~20 us, and the handler
    raises `_Interrupt` in the main thread whenever the switch it yields is on."""
    armed = _Armed()
    done = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if armed.on:
            raise _Interrupt

    def signaller() -> None:
        while not done.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.00002)

    # An interrupt can land in a finalizer (__del__, a weakref callback), or in the hook
    # that reports what one raised. Reports are kept until the signals stop, then the
    # ones not caused by an interrupt go to the usual hook.
    reports: list[Any] = []

    old_unraisable = sys.unraisablehook
    sys.unraisablehook = reports.append
    old_handler = signal.signal(signal.SIGUSR1, handler)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # let the signaller run often, so signals land everywhere
    thread = threading.Thread(target=signaller, daemon=True)
    try:
        thread.start()
        yield armed
    finally:
        armed.on = False
        done.set()
        thread.join()
        sys.setswitchinterval(old_interval)
        signal.signal(signal.SIGUSR1, old_handler)
        sys.unraisablehook = old_unraisable
        for report in reports:
            if not isinstance(report.exc_value, _Interrupt):
                old_unraisable(report)


def left_held(idiom: str, seconds: float, enough: float = math.inf) -> tuple[int, int]:
    """(interrupts, times the lock was left held) over `seconds` of signals, around a bare
    lock taken with `idiom`; sooner once `enough` interrupts have landed (a test counts
    interrupts, and lets a busy machine take its time to reach them)."""
    loop = IDIOMS[idiom]
    lock = threading.Lock()
    interrupts = held = 0
    with _signals() as armed:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and interrupts < enough:
            try:
                armed.on = True
                loop(lock)
            except _Interrupt:
                armed.on = False
                interrupts += 1
                if lock.locked():  # only this thread ever takes it
                    held += 1
                    lock.release()
    return interrupts, held


def pool_left_held(
    make_pool: Callable[[], Any], seconds: float, enough: float = math.inf
) -> tuple[int, int]:
    """The same around a real pool's getconn + putconn: (interrupts, times the pool's lock
    was left held). Stops at the first lock left held (that pool would hang every caller),
    or once `enough` interrupts have landed.

    An interrupt can also land inside a critical section and lose a connection from the
    pool's books (psycopg2.pool then says "connection pool exhausted"; pgpool does not
    defend that case either, see tests/test_interrupts.py); then a new pool is made.
    """
    pools = [make_pool()]
    interrupts = held = 0
    # An interrupt that drops a socket object half-handled (taken out of a list, say, and
    # not yet closed) leaves it to its finalizer, which closes it and warns: expected here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            with _signals() as armed:
                deadline = time.monotonic() + seconds
                while time.monotonic() < deadline and not held and interrupts < enough:
                    try:
                        try:
                            armed.on = True
                            while True:
                                pool = pools[-1]
                                pool.putconn(pool.getconn())
                        except _Interrupt:
                            armed.on = False
                            interrupts += 1
                            if pools[-1]._lock.locked():  # nobody else uses this pool
                                held += 1
                        except Exception:  # the books lost a connection: start again
                            armed.on = False
                            pools.append(make_pool())
                    except _Interrupt:  # landed in the recovery above, before it disarmed
                        armed.on = False
        finally:
            for pool in pools:
                if pool._lock.locked():
                    pool._lock.release()  # a lock left held: let closeall run
                with contextlib.suppress(Exception):
                    pool.closeall()
            gc.collect()  # what the interrupts dropped is finalized while the filter holds
    return interrupts, held


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.lock_idiom", description=__doc__)
    parser.add_argument("seconds", type=float, nargs="?", default=5.0)
    parser.add_argument("--dsn", help="also try psycopg2.pool's and pgpool's own pools on it")
    args = parser.parse_args(argv)
    for idiom in IDIOMS:
        interrupts, held = left_held(idiom, args.seconds)
        print(f"{idiom:12} {interrupts:7,} interrupts, the lock left held after {held:,}")
    if args.dsn:
        import psycopg2.pool

        import pgpool

        makers = {
            "psycopg2.pool": lambda: psycopg2.pool.ThreadedConnectionPool(1, 1, args.dsn),
            "pgpool": lambda: pgpool.ThreadedConnectionPool(1, 1, args.dsn, timeout=1),
        }
        for name, make in makers.items():
            interrupts, held = pool_left_held(make, args.seconds)
            verdict = "its lock left held: every later call would hang" if held else "never"
            print(f"{name:14} {interrupts:7,} interrupts; {verdict}")


if __name__ == "__main__":
    main(sys.argv[1:])

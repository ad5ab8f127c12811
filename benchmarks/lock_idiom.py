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
interrupt it looks whether the lock was left held. Run it with::

    .venv/bin/python -m benchmarks.lock_idiom [SECONDS]

Main thread only (Python runs signal handlers there); POSIX only (SIGUSR1).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
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


def left_held(idiom: str, seconds: float) -> tuple[int, int]:
    """(interrupts, times the lock was left held) over `seconds` of signals."""
    loop = IDIOMS[idiom]
    lock = threading.Lock()
    armed = threading.Event()
    done = threading.Event()

    def handler(signum: int, frame: Any) -> None:
        if armed.is_set():
            raise _Interrupt

    def signaller() -> None:
        while not done.is_set():
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.00002)

    old_handler = signal.signal(signal.SIGUSR1, handler)
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # let the signaller run often, so signals land everywhere
    thread = threading.Thread(target=signaller, daemon=True)
    interrupts = held = 0
    try:
        thread.start()
        armed.set()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                loop(lock)
            except _Interrupt:
                interrupts += 1
                if lock.locked():  # only this thread ever takes it
                    held += 1
                    lock.release()
    finally:
        armed.clear()
        done.set()
        thread.join()
        sys.setswitchinterval(old_interval)
        signal.signal(signal.SIGUSR1, old_handler)
    return interrupts, held


def main(argv: list[str]) -> None:
    seconds = float(argv[0]) if argv else 5.0
    for idiom in IDIOMS:
        interrupts, held = left_held(idiom, seconds)
        print(f"{idiom:12} {interrupts:7,} interrupts, the lock left held after {held:,}")


if __name__ == "__main__":
    main(sys.argv[1:])

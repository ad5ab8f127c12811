"""A deadline for a blocking call on a connection: cut its socket when time is up.

psycopg2 cannot interrupt a synchronous query: libpq sleeps in poll() on the socket until
the server answers. When the network silently drops packets (a "black hole"), a health-check
ping would sleep until TCP gives up, minutes later, long past the caller's deadline. The
watchdog bounds it: when the deadline passes, it shuts the socket down; poll() wakes, the
query fails, and the pool discards the connection.

One daemon thread serves every pool in the process, started on first use. Arming and
disarming are cheap (a heap push, a flag); the thread sleeps until the earliest deadline.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import socket
import threading
import time
from typing import Any


class Alarm:
    """One armed deadline. After `disarm()` returns, `fired` tells whether the socket was cut.

    The alarm holds a duplicate of the connection's descriptor, not its number: a number
    is reused by the next socket the process opens once the connection is closed, and an
    alarm that fires late (its owner was interrupted before it could disarm) must cut its
    own connection's socket, never whichever connection got that number since. The
    duplicate is closed when the alarm fires or is disarmed, or else when the alarm is
    dropped (an interrupt between two lines of arm() or disarm()): it is held as a socket
    object, whose close() is idempotent, so closing it again never hits a reused number.
    """

    __slots__ = ("fired", "live", "sock")

    def __init__(self, fd: int) -> None:
        self.sock = socket_copy(fd)
        self.live = True
        self.fired = False

    def __del__(self) -> None:
        # Usually closed already; else closed here quietly (a socket's own finalizer would
        # warn). No sock at all if __init__ failed (out of descriptors).
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()

    def disarm(self) -> bool:
        """Cancel the alarm; True if it had already fired (the connection is unusable)."""
        with _cond:
            self.live = False
            fired = self.fired
        if not fired:
            self.sock.close()  # the thread no longer touches it once live is False
        return fired


_cond = threading.Condition()
_heap: list[tuple[float, int, Alarm]] = []
_order = itertools.count()
_thread: threading.Thread | None = None


def socket_copy(fd: int) -> socket.socket:
    """A socket object holding a duplicate of descriptor `fd` (an alarm's, and a Stopper's).
    Raises OSError when no descriptor is left; never leaves a duplicate open behind it."""
    duplicate = os.dup(fd)
    try:
        return socket.socket(fileno=duplicate)
    except OSError:  # socket() failed (out of memory, say): nothing holds it, close it here
        # Not on an interrupt (BaseException): one can land just after socket() made the
        # object, which then closes the descriptor itself as it is dropped, and closing the
        # number a second time could close another thread's new descriptor.
        os.close(duplicate)
        raise


def arm(conn: Any, seconds: float) -> Alarm:
    """Cut `conn`'s socket in `seconds` unless the returned alarm is disarmed first."""
    global _thread
    alarm = Alarm(conn.fileno())
    with _cond:
        heapq.heappush(_heap, (time.monotonic() + seconds, next(_order), alarm))
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, name="pgpool-watchdog", daemon=True)
            _thread.start()
        _cond.notify()
    return alarm


def _run() -> None:
    with _cond:
        while True:
            while _heap and not _heap[0][2].live:
                heapq.heappop(_heap)  # disarmed: forget it
            if not _heap:
                _cond.wait()
                continue
            # Only the deadline while asleep: a local holding the alarm would keep one that
            # its owner dropped undisarmed (interrupted) alive, its duplicate open, meanwhile.
            delay = _heap[0][0] - time.monotonic()
            if delay > 0:
                _cond.wait(delay)
                continue
            _, _, alarm = heapq.heappop(_heap)
            # Still under the lock: disarm() cannot return between this check and the cut,
            # so a disarmed connection (already handed to a caller) is never cut.
            alarm.fired = True
            with contextlib.suppress(OSError):
                alarm.sock.shutdown(socket.SHUT_RDWR)
            alarm.sock.close()


def reinit_after_fork() -> None:
    """The thread does not survive fork(); the child starts its own on first use."""
    global _cond, _thread
    _cond = threading.Condition()
    for _, _, alarm in _heap:
        alarm.sock.close()  # the child's copy of the duplicate: nobody will disarm it here
    _heap.clear()
    _thread = None

"""`Stopper`: what the pool keeps to stop a connection that another thread is using.

The pool sometimes stops a connection in use: a lease past `max_lease` (the reclaim, in
maintenance.py) and, at the deadline of `closeall(timeout=...)`, every connection still
checked out. That takes two things. A *cancel request*, so that the server stops the
query: a backend busy in a long query notices its socket is gone only when the query ends,
and counts against `max_connections` until then. And the *socket*, to shut it down, so that
the borrower's wait ends now and `close()` (which waits for a running query) returns.

Both used to be read from the connection at the moment of stopping, which is exactly when
its borrower may be closing it: `conn.pgconn_ptr`, then libpq's PQgetCancel on that PGconn
(which a `conn.close()` in between had freed: a crash under MALLOC_PERTURB_, a silent read
of freed memory without it); and `conn.fileno()`, then a duplicate of that number (which
may by then belong to another connection, whose socket would be shut down instead). So
both are taken once, when the connection has just been opened and nobody else holds it,
and kept with the pool's record of it (`Slot.stopper`, state.py): a PGcancel is a copy of
the server's address and the backend's key, valid after its connection is gone, and a
duplicate descriptor keeps its own socket open, so its number is never reused meanwhile.
The price is one more descriptor per pooled connection, until the pool discards it.

Several threads may stop and discard the same connection at once (a reclaim racing the
borrower's own return, which closes it too). Each resource sits in a one-item list: a user
takes it out (`list.pop`, atomic), uses it and puts it back, then frees it if `release()`
was called meanwhile; `release()` frees only what it finds in its place. So each is freed
exactly once, never while in use, and without a lock: a lock held by a parent thread at
fork() would be held for ever in the child.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
from typing import TYPE_CHECKING, Any

import psycopg2

from .watchdog import socket_copy

if TYPE_CHECKING:
    import ctypes  # imported by _libpq() on the first connect, not by `import pgpool`


class Stopper:
    """A connection's cancel request and a duplicate of its socket, taken when it opened.

    Thread-safe without a lock; `release()` may be called any number of times, from any
    thread, also while another thread cancels or cuts.
    """

    __slots__ = ("_cancel", "_released", "_sock")

    def __init__(self, conn: Any) -> None:
        """Take what stopping `conn` needs. Call it only while no other thread can close
        `conn`: just after connecting. Raises OSError if no descriptor is left."""
        self._released = False
        self._cancel: list[int] = []
        self._sock: list[socket.socket] = []
        try:
            fd = conn.fileno()
        except Exception:
            fd = None  # not a real socket (a test's fake connection): nothing to cut
        if fd is not None:
            self._sock.append(socket_copy(fd))
        pgconn = getattr(conn, "pgconn_ptr", None)  # None: no libpq behind it (a fake)
        if pgconn:
            cancel = _libpq().PQgetCancel(pgconn)  # argtypes make it a void pointer
            if cancel:
                self._cancel.append(cancel)

    def __del__(self) -> None:
        # Usually released already, by whoever discarded the connection. If not (the slot
        # was dropped without it: an interrupt, a pool that was garbage-collected), here.
        with contextlib.suppress(Exception):  # at interpreter exit, modules may be gone
            self.release()

    def release(self) -> None:
        """Free the cancel request and close the duplicate: now, or as soon as the thread
        using one is done with it. Call it once the connection is closed for good."""
        self._released = True
        with contextlib.suppress(IndexError):
            cancel = self._cancel.pop()  # first: a fake connection never loads libpq
            _libpq().PQfreeCancel(cancel)
        with contextlib.suppress(IndexError):
            self._sock.pop().close()  # close, never shutdown: in a forked child, see base.py

    def send_cancel(self) -> threading.Event | None:
        """Ask the server to cancel whatever runs on the connection; the returned event is
        set once the request has been delivered. Harmless on an idle backend. None when
        there is no request to send (released already, or libpq gave none): then there is
        nothing to wait for, and a caller that waited on an event never set would wait out
        its whole timeout for nothing.

        A cancel request travels on a short connection of its own, so it works while
        another thread waits in a query. psycopg2's `cancel()` would do, but it keeps the
        GIL while libpq waits on the network: against a black-holed server it froze the
        whole process. So libpq's PQcancel is called through ctypes, which releases the
        GIL, on a helper thread that nobody joins (libpq's cancel has no time limit of its
        own): wait on the event for as long as you can afford.
        """
        if not self._cancel:
            return None
        delivered = threading.Event()
        threading.Thread(
            target=self._send, args=(delivered,), name="pgpool-cancel", daemon=True
        ).start()
        return delivered

    def cancel(self, timeout: float) -> bool:
        """`send_cancel()`, then wait at most `timeout` seconds: was it delivered in time?"""
        delivered = self.send_cancel()
        return delivered is not None and delivered.wait(timeout)

    def _send(self, delivered: threading.Event) -> None:
        cancel = None
        try:
            cancel = self._cancel.pop()
            import ctypes  # already loaded by _libpq(): a dictionary look-up

            errbuf = ctypes.create_string_buffer(256)
            if _libpq().PQcancel(cancel, errbuf, len(errbuf)):
                delivered.set()
        except IndexError:
            pass  # released since send_cancel() looked: nothing to send
        finally:
            if cancel is not None:
                self._give_back(self._cancel, cancel)

    def cut(self) -> None:
        """Shut down the connection's socket now: a query running on it fails at once, so a
        `close()` that would wait for it returns promptly. shutdown() acts on the socket
        itself, so doing it through the duplicate wakes libpq's poll() on the original."""
        sock = None
        try:
            sock = self._sock.pop()
            sock.shutdown(socket.SHUT_RDWR)
        except IndexError:
            pass  # released already, or another thread is cutting it right now
        except OSError:
            pass  # not connected any more: nothing to cut
        finally:
            if sock is not None:
                self._give_back(self._sock, sock)

    def _give_back(self, holder: list[Any], item: Any) -> None:
        """Put back what a user took out; free it if `release()` was called meanwhile."""
        holder.append(item)
        if self._released:
            self.release()


@functools.cache
def _libpq() -> ctypes.CDLL:
    # The libpq psycopg2 itself is linked against (psycopg2-binary bundles its own): symbols
    # looked up through the extension module's handle resolve in its dependencies. ctypes is
    # imported here, on the first connect: it would add ~1 ms to every `import pgpool`.
    import ctypes

    libpq = ctypes.CDLL(psycopg2._psycopg.__file__)
    libpq.PQgetCancel.restype = ctypes.c_void_p
    libpq.PQgetCancel.argtypes = [ctypes.c_void_p]
    libpq.PQcancel.restype = ctypes.c_int
    libpq.PQcancel.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
    libpq.PQfreeCancel.restype = None
    libpq.PQfreeCancel.argtypes = [ctypes.c_void_p]
    return libpq

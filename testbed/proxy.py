"""A loopback TCP proxy that can misbehave on command: slow connects, blackholes, drops.

Put `TcpProxy` between a pool and PostgreSQL to reproduce network faults
deterministically, without root or iptables::

    with TcpProxy("127.0.0.1", pg.port) as proxy:
        pool = Pool(proxy.dsn_for(pg.dsn))
        proxy.connect_delay = 0.5   # new connections now take >= 0.5 s to reach the server
        proxy.blackhole()           # bytes stop flowing; sockets stay open, like a dead link
        proxy.restore()             # ... and flow again
        proxy.drop_all()            # every current connection is cut (RST), like a failover

Design: one accept thread, plus one daemon thread per proxied connection that forwards
both directions with a poll() selector. Each thread checks its stop flag every `POLL`
seconds, so `drop_all()` and `close()` return within about that long and leave no thread
behind; the price is ~20 wake-ups a second per idle connection, the same for every pool
measured through the proxy.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
from types import TracebackType

from psycopg2.extensions import make_dsn

__all__ = ["TcpProxy"]

POLL = 0.05  # seconds between checks of the stop flag in blocking loops
_CHUNK = 65536


class _Link:
    """One proxied client: its sockets, its pump thread and its stop flag."""

    def __init__(self, client: socket.socket, delay: float) -> None:
        self.client = client
        self.upstream: socket.socket | None = None
        self.delay = delay  # captured at accept: changing connect_delay spares live links
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None


class TcpProxy:
    """Forward 127.0.0.1:`port` to `target_host`:`target_port`, with fault injection.

    `connections` counts links currently open; `accepted` counts all links ever accepted.
    At most `max_connections` links are served at once; extra clients are closed at once.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        connect_delay: float = 0.0,
        max_connections: int = 1024,
    ) -> None:
        self.target = (target_host, target_port)
        self.connect_delay = connect_delay
        self.max_connections = max_connections
        self.accepted = 0
        self._links: set[_Link] = set()
        self._lock = threading.Lock()
        self._flowing = threading.Event()  # cleared while blackholed
        self._flowing.set()
        self._closed = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("call start() first")
        port: int = self._listener.getsockname()[1]
        return port

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._links)

    def dsn_for(self, dsn: str) -> str:
        """Return `dsn` rewritten to connect through this proxy."""
        return make_dsn(dsn, host="127.0.0.1", port=self.port)

    def start(self) -> TcpProxy:
        """Listen on a free loopback port and start accepting."""
        if self._listener is not None or self._closed.is_set():
            raise RuntimeError("a TcpProxy starts once")
        listener = socket.create_server(("127.0.0.1", 0), backlog=socket.SOMAXCONN)
        listener.settimeout(POLL)  # so the accept loop notices close()
        self._listener = listener
        self._acceptor = threading.Thread(
            target=self._accept_loop, name="proxy-accept", daemon=True
        )
        self._acceptor.start()
        return self

    def blackhole(self) -> None:
        """Stop forwarding in both directions, keeping every socket open.

        New clients are still accepted but get no bytes (nor reach the server) until
        `restore()`. Bytes already in flight when this is called may still be delivered,
        as on a real network; bytes sent afterwards wait in kernel buffers.
        """
        self._flowing.clear()

    def restore(self) -> None:
        """Resume forwarding; data held back during the blackhole flows again."""
        self._flowing.set()

    def drop_all(self) -> None:
        """Cut every current link abruptly (RST to both ends); returns once they are gone."""
        with self._lock:
            links = list(self._links)
        for link in links:
            link.stop.set()
        for link in links:
            if link.thread is not None:
                link.thread.join()

    def close(self) -> None:
        """Stop accepting, drop every link and join every thread. Idempotent."""
        self._closed.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
        self.drop_all()  # no new links can appear: the acceptor has exited

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(
        self, typ: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # e.g. out of file descriptors: back off, keep serving
                self._closed.wait(POLL)
                continue
            client.settimeout(POLL)  # blocking calls wake up to check the stop flag
            link = _Link(client, self.connect_delay)
            with self._lock:
                if len(self._links) >= self.max_connections:
                    client.close()
                    continue
                self.accepted += 1
                name = f"proxy-link-{self.accepted}"
                link.thread = threading.Thread(target=self._serve, args=(link,), name=name)
                link.thread.daemon = True
                # Started under the lock, so drop_all() never sees a link it cannot join.
                self._links.add(link)
                link.thread.start()

    def _serve(self, link: _Link) -> None:
        try:
            # A slow connect: wait before reaching upstream (wakes early if dropped).
            if link.delay > 0 and link.stop.wait(link.delay):
                return
            while not self._flowing.wait(POLL):  # blackholed: do not even reach the server
                if link.stop.is_set() or self._closed.is_set():
                    return
            try:
                link.upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                return  # server down: the client sees its connection closed
            link.upstream.settimeout(POLL)
            self._pump(link, link.upstream)
        finally:
            with self._lock:
                self._links.discard(link)
            for sock in (link.client, link.upstream):
                if sock is not None:
                    if link.stop.is_set():  # linger 0 turns close() into a RST: abrupt
                        with contextlib.suppress(OSError):
                            linger = struct.pack("ii", 1, 0)
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    sock.close()

    def _pump(self, link: _Link, upstream: socket.socket) -> None:
        peer = {link.client: upstream, upstream: link.client}
        with selectors.PollSelector() as sel:  # unlike epoll, costs no file descriptor
            sel.register(link.client, selectors.EVENT_READ)
            sel.register(upstream, selectors.EVENT_READ)
            while not link.stop.is_set():
                # While blackholed nothing is read, so nothing is forwarded either way.
                if not self._flowing.wait(POLL):
                    continue
                for key, _events in sel.select(POLL):
                    if not self._flowing.is_set():
                        break  # blackholed after select(): leave the bytes in the kernel
                    src: socket.socket = key.fileobj  # type: ignore[assignment]
                    try:
                        data = src.recv(_CHUNK)
                        if not data or not self._send(link, peer[src], data):
                            return  # one side closed: close the other too
                    except OSError:
                        return

    @staticmethod
    def _send(link: _Link, dst: socket.socket, data: bytes) -> bool:
        """sendall() that gives up when the link is dropped, even if `dst` never reads."""
        view = memoryview(data)
        while view:
            if link.stop.is_set():
                return False
            try:
                view = view[dst.send(view) :]
            except TimeoutError:
                continue  # peer's buffer is full; nothing was sent, try again
        return True

"""TcpProxy: the fault injector used by the fault tests and the spike benchmark.

Timing assertions are lower bounds only: a loaded machine may be slow, never fast.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator

import psycopg2
import pytest

from testbed.proxy import TcpProxy


def _wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def _query(conn: psycopg2.extensions.connection) -> object:
    with conn.cursor() as cur:
        cur.execute("SELECT 1")
        row = cur.fetchone()
    return None if row is None else row[0]


@pytest.fixture
def echo_port() -> Iterator[int]:
    """A tiny echo server: the proxy's pure-TCP behaviour, without PostgreSQL's protocol."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    stop = threading.Event()
    clients: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            clients.append(client)
            threading.Thread(target=echo, args=(client,), daemon=True).start()

    def echo(client: socket.socket) -> None:
        try:
            while data := client.recv(4096):
                client.sendall(data)
        except OSError:
            pass

    acceptor = threading.Thread(target=serve, daemon=True)
    acceptor.start()
    yield listener.getsockname()[1]
    stop.set()
    acceptor.join()
    listener.close()
    for client in clients:
        client.close()


def _client(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    return sock


def test_forwards_a_real_query(tcp_proxy: TcpProxy, dsn: str) -> None:
    conn = psycopg2.connect(tcp_proxy.dsn_for(dsn))
    try:
        assert _query(conn) == 1
        assert tcp_proxy.connections == 1
        assert tcp_proxy.accepted == 1
    finally:
        conn.close()
    _wait_for(lambda: tcp_proxy.connections == 0)


def test_connect_delay_slows_new_connections(tcp_proxy: TcpProxy, dsn: str) -> None:
    tcp_proxy.connect_delay = 0.5
    started = time.monotonic()
    conn = psycopg2.connect(tcp_proxy.dsn_for(dsn))
    try:
        assert time.monotonic() - started >= 0.5
        assert _query(conn) == 1
    finally:
        conn.close()


def test_blackhole_blocks_connects_until_restore(tcp_proxy: TcpProxy, dsn: str) -> None:
    tcp_proxy.blackhole()
    started = time.monotonic()
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(tcp_proxy.dsn_for(dsn), connect_timeout=1)
    assert time.monotonic() - started >= 0.9  # it hung until the timeout, not refused
    tcp_proxy.restore()
    conn = psycopg2.connect(tcp_proxy.dsn_for(dsn), connect_timeout=5)
    try:
        assert _query(conn) == 1
    finally:
        conn.close()


def test_blackhole_holds_bytes_of_open_links(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port) as proxy, _client(proxy) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        proxy.blackhole()
        sock.sendall(b"held")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4)  # nothing comes back, and the socket stays open
        proxy.restore()
        sock.settimeout(5)
        assert sock.recv(4) == b"held"


def test_drop_all_breaks_existing_connections(tcp_proxy: TcpProxy, dsn: str) -> None:
    conn = psycopg2.connect(tcp_proxy.dsn_for(dsn))
    try:
        assert _query(conn) == 1
        tcp_proxy.drop_all()
        assert tcp_proxy.connections == 0
        with pytest.raises(psycopg2.OperationalError):
            _query(conn)
    finally:
        conn.close()
    fresh = psycopg2.connect(tcp_proxy.dsn_for(dsn))  # the proxy itself keeps working
    try:
        assert _query(fresh) == 1
    finally:
        fresh.close()


def test_unreachable_target_closes_the_client() -> None:
    with socket.socket() as probe:  # a port with nothing behind it
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    with TcpProxy("127.0.0.1", dead_port) as proxy:
        with pytest.raises(psycopg2.OperationalError):
            psycopg2.connect(f"host=127.0.0.1 port={proxy.port} user=x connect_timeout=5")
        _wait_for(lambda: proxy.connections == 0)


def test_max_connections_refuses_extra_clients(echo_port: int) -> None:
    with TcpProxy("127.0.0.1", echo_port, max_connections=1) as proxy:
        with _client(proxy) as first, _client(proxy) as second:
            first.sendall(b"a")
            assert first.recv(1) == b"a"
            assert second.recv(1) == b""  # closed by the proxy at once
        assert proxy.accepted == 1


def test_close_leaves_no_threads(echo_port: int) -> None:
    def proxy_threads() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("proxy-")]

    assert proxy_threads() == []
    proxy = TcpProxy("127.0.0.1", echo_port).start()
    with _client(proxy) as live, _client(proxy) as held:
        live.sendall(b"x")
        assert live.recv(1) == b"x"
        proxy.connect_delay = 60  # a link parked in its connect delay
        with _client(proxy) as delayed:
            _wait_for(lambda: proxy.connections == 3)
            proxy.blackhole()  # and links parked in a blackhole
            held.sendall(b"y")
            proxy.close()
            assert proxy.connections == 0
            assert proxy_threads() == []
            with pytest.raises(ConnectionResetError):  # dropped links are cut with a RST
                delayed.recv(1)
        proxy.close()  # idempotent

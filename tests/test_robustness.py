"""Regression tests for what an attacker's run found (issue 8): each failed before its fix.

- ~1,025 failed connects in a row overflowed the back-off arithmetic under the lock;
- a `max_lease` reclaim freed its slot before the connection was closed (the server saw
  more than `maxconn` sessions) and closed a busy connection while maintenance waited for
  the borrower's query; the borrower's putconn meanwhile raised;
- a scrubbed connect error still carried the original, password and all, in its chain;
- a key not equal to itself (nan) could not be returned; a `configure` that left its
  transaction in error had its SETs silently rolled back.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import inspect
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg2
import psycopg2.errors
import pytest
from fakes import FakeClock, FakeServer
from faultsupport import count_backends, in_thread, pool_dsn, scalar, unique_app, wait_for

import pgpool
from pgpool.state import BACKOFF_CAP, PoolState
from pgpool.stopper import Stopper

# -- 1. back-off after a very long run of failed connects ---------------------------------


def _always_failing(*_args: Any, **_kwargs: Any) -> Any:
    raise psycopg2.OperationalError("connection refused (on purpose)")


def test_backoff_survives_thousands_of_failures_in_a_row() -> None:
    options = pgpool.PoolOptions(minconn=0, maxconn=1)
    state = PoolState(options)
    now = 0.0
    for _ in range(1_100):  # 2 ** 1024 overflows a float: the 1,025th failure raised
        state.connecting += 1  # as reserve_connect would
        state.connect_failed(psycopg2.OperationalError("refused"), now, 0.5)
        assert now < state.next_connect_at <= now + BACKOFF_CAP
        now = state.next_connect_at
    assert state.connect_failures == 1_100 and state.connecting == 0


def test_a_retry_loop_keeps_getting_the_drivers_error() -> None:
    pool = pgpool.SimpleConnectionPool(0, 1, connector=_always_failing)
    for _ in range(1_100):
        with pytest.raises(psycopg2.OperationalError, match="on purpose"):
            pool.getconn()
    assert pool.stats().connect_errors == 1_100
    pool.closeall()


def test_refill_recovers_after_a_long_outage() -> None:
    """Before the fix, the overflow skipped the refill's bookkeeping: a (4, 4) pool ended
    with `connecting 3` for good and could hand out one connection, forever."""
    clock, server = FakeClock(), FakeServer()
    pool = pgpool.ThreadedConnectionPool(
        4, 4, clock=clock, connector=server.connect, maintenance_interval=None,
        max_connecting=4, max_lifetime=10.0,
    )  # fmt: skip
    server.refuse()
    clock.advance(20)  # every connection expires: maintenance closes them and refills
    for _ in range(1_100):
        pool.maintain()
        clock.advance(BACKOFF_CAP + 0.1)  # past any back-off
    assert pool.stats().connecting == 0
    server.accept()
    pool.maintain()
    stats = pool.stats()
    assert (stats.idle, stats.connecting) == (4, 0)
    conns = [pool.getconn(timeout=0) for _ in range(4)]
    for conn in conns:
        pool.putconn(conn)
    pool.closeall()


# -- 3 and 4. max_lease reclaim ----------------------------------------------------------


@pytest.fixture
def sampler(dsn: str) -> Iterator[tuple[str, list[int]]]:
    """(application name, samples): the pool's server sessions, counted every 10 ms."""
    app = unique_app("reclaim")
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        admin = psycopg2.connect(dsn)
        admin.autocommit = True
        try:
            while not stop.is_set():
                samples.append(
                    scalar(
                        admin,
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                        (app,),
                    )
                )
                stop.wait(0.01)
        finally:
            admin.close()

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    yield app, samples
    stop.set()
    thread.join(10)


@pytest.mark.timeout(60)
def test_reclaim_never_puts_the_server_above_maxconn(
    dsn: str, sampler: tuple[str, list[int]]
) -> None:
    app, samples = sampler
    pool = pgpool.ThreadedConnectionPool(
        0, 2, pool_dsn(dsn, app), timeout=10, max_lease=0.3, maintenance_interval=0.05
    )
    # Two borrowers forget their connections, each busy in a long query when reclaimed.
    busy = [in_thread(lambda: scalar(pool.getconn(), "SELECT pg_sleep(30)")) for _ in range(2)]
    wait_for(lambda: count_backends(dsn, app) == 2, what="two busy borrowers")
    # Others keep asking: each reclaimed slot is refilled, but only once it is free.
    for _ in range(6):
        conn = pool.getconn()
        scalar(conn, "SELECT 1")
        pool.putconn(conn)
    for thread, outcome in busy:
        thread.join(10)
        assert isinstance(outcome.error, psycopg2.DatabaseError), outcome  # its socket was cut
    assert pool.stats().leases_reclaimed == 2
    pool.closeall()
    assert samples and max(samples) <= 2, f"the server saw {max(samples)} sessions, maxconn 2"


@pytest.mark.timeout(60)
def test_reclaiming_a_busy_connection_does_not_stall_maintenance(dsn: str) -> None:
    app = unique_app("reclaim-busy")
    pool = pgpool.ThreadedConnectionPool(
        1, 3, pool_dsn(dsn, app), max_lease=0.3, maintenance_interval=0.05, max_idle=0.2
    )
    conn = pool.getconn()
    _thread, outcome = in_thread(lambda: scalar(conn, "SELECT pg_sleep(30)"))
    # The reclaim cuts the connection: the forgotten query ends now, not in 30 s.
    assert outcome.done.wait(15), "the reclaim waited for the borrower's query"
    assert isinstance(outcome.error, psycopg2.DatabaseError)
    pool.putconn(conn)  # the borrower returns it late: harmless, as documented
    # Maintenance goes on: it refills minconn and keeps reaping.
    wait_for(lambda: pool.stats().idle == 1, what="refill after the reclaim")
    extra = [pool.getconn(), pool.getconn()]
    for c in extra:
        pool.putconn(c)
    wait_for(lambda: pool.stats().idle == 1, what="reaping back to minconn")
    assert pool.stats().leases_reclaimed == 1
    pool.closeall()
    assert conn.closed


def test_returning_a_reclaimed_connection_is_harmless_even_after_closeall() -> None:
    clock, server = FakeClock(), FakeServer()
    pool = pgpool.ThreadedConnectionPool(
        0, 2, clock=clock, connector=server.connect, maintenance_interval=None, max_lease=5.0
    )
    conn = pool.getconn()
    clock.advance(6)
    pool.maintain()
    assert pool.stats().leases_reclaimed == 1 and pool.stats().in_use == 0
    pool.putconn(conn)  # while the pool is open
    pool.closeall()
    pool.putconn(conn)  # and after it closed
    assert server.open_connections() == []


# -- 5. no password anywhere in an exception's chain ---------------------------------------

SECRET = "Hunter2-S3cret"


def _chain(error: BaseException) -> Iterator[BaseException]:
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is e for e in seen):
            continue
        seen.append(current)
        yield current
        pending += [current.__cause__, current.__context__]


def _everything_in(error: BaseException) -> str:
    parts: list[str] = []
    for linked in _chain(error):
        parts += [str(linked), repr(linked), *map(repr, linked.args)]
        parts += getattr(linked, "__notes__", [])
        parts += [str(getattr(linked, "pgerror", "")), repr(getattr(linked, "diag", ""))]
    return "\n".join(parts)


# Each way of giving a password, with a mistake that makes libpq quote it back.
WAYS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {
    "dsn-sslmode": ((f"host=127.0.0.1 port=1 password={SECRET} sslmode={SECRET}",), {}),
    "dsn-unquoted-space": ((f"host=127.0.0.1 port=1 password={SECRET} x",), {}),
    "uri-sslmode": ((f"postgresql://u:{SECRET}@127.0.0.1:1/db?sslmode={SECRET}",), {}),
    "uri-slash": ((f"postgresql://u:{SECRET}/x@127.0.0.1:1/db",), {}),
    "password-kwarg": (("host=127.0.0.1 port=1",), {"password": SECRET, "sslmode": SECRET}),
    "dsn-kwarg": ((), {"dsn": f"host=127.0.0.1 port=1 password={SECRET} sslmode={SECRET}"}),
}


@pytest.mark.parametrize("way", sorted(WAYS))
@pytest.mark.parametrize("entry", ["constructor", "getconn", "simple-getconn"])
def test_no_password_anywhere_in_the_chain(way: str, entry: str) -> None:
    args, kwargs = WAYS[way]
    error: BaseException
    if entry == "constructor":
        with pytest.raises(psycopg2.Error) as caught:
            pgpool.ThreadedConnectionPool(1, 1, *args, **kwargs)
        error = caught.value
    else:
        cls = (
            pgpool.SimpleConnectionPool
            if entry == "simple-getconn"
            else pgpool.ThreadedConnectionPool
        )
        pool = cls(0, 1, *args, timeout=0, **kwargs)
        with pytest.raises(psycopg2.Error) as caught:
            pool.getconn()
        error = caught.value
        pool.closeall()
    text = _everything_in(error)
    assert SECRET not in text, f"the password rides along in: {text}"
    assert "********" in str(error) or SECRET not in str(error)


def test_a_connect_error_without_a_password_is_left_as_it_is() -> None:
    original = psycopg2.OperationalError("refused")

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise original

    pool = pgpool.SimpleConnectionPool(0, 1, "password=unrelated", connector=refuse)
    with pytest.raises(psycopg2.OperationalError) as caught:
        pool.getconn()
    assert caught.value is original
    pool.closeall()


# -- 6. keys not equal to themselves, a configure left in error -----------------------------


@pytest.mark.parametrize("cls", [pgpool.SimpleConnectionPool, pgpool.ThreadedConnectionPool])
def test_a_nan_key_can_be_returned(cls: type[pgpool.AbstractConnectionPool]) -> None:
    server = FakeServer()
    pool = cls(0, 2, connector=server.connect, maintenance_interval=None)
    key = float("nan")
    conn = pool.getconn(key)
    assert pool.getconn(key) is conn  # sticky, as in psycopg2.pool
    pool.putconn(conn, key=key)
    assert pool.stats().idle == 1
    with pytest.raises(pgpool.PoolError, match="returned twice"):
        pool.putconn(conn, key=key)
    pool.closeall()


def test_a_configure_left_in_error_is_an_error_not_a_silent_rollback(dsn: str) -> None:
    def configure(conn: Any) -> None:
        with conn.cursor() as cur:
            cur.execute("SET search_path TO pg_catalog")
            with pytest.raises(psycopg2.errors.UndefinedTable):
                cur.execute("SELECT * FROM no_such_table_here")

    # A Simple pool connects inline: the error reaches the caller as it is (a Threaded
    # pool's connector would report it in a PoolTimeout, after the caller's timeout).
    pool = pgpool.SimpleConnectionPool(0, 1, dsn, configure=configure)
    with pytest.raises(pgpool.PoolError, match="configure callback left the connection"):
        pool.getconn()
    stats = pool.stats()
    assert (stats.connecting, stats.in_use, stats.idle) == (0, 0, 0)  # nothing lost
    pool.closeall()


CANCEL_IN_A_BLACK_HOLE = """
import sys, time
import psycopg2
from psycopg2.extensions import parse_dsn
from pgpool.stopper import Stopper
from testbed.proxy import TcpProxy

dsn = sys.argv[1]
params = parse_dsn(dsn)
with TcpProxy(params["host"], int(params["port"])) as proxy:
    conn = psycopg2.connect(proxy.dsn_for(dsn))
    stopper = Stopper(conn)
    proxy.blackhole()
    delivered = stopper.cancel(0.5)
    print("delivered" if delivered else "gave up", flush=True)
    proxy.restore()
"""


def test_a_cancel_into_a_black_hole_freezes_nothing(dsn: str) -> None:
    """psycopg2's conn.cancel() keeps the GIL while libpq waits on the network: against a
    black-holed server the whole process froze (no thread ran, no timeout fired). The
    reclaim's cancel must give up after its time and leave the process running. Run in a
    child process, so that a freeze fails this test instead of hanging the suite."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", CANCEL_IN_A_BLACK_HOLE, dsn],
        capture_output=True, text=True, timeout=60, cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "gave up"


# -- a health check's deadline never cuts another connection ------------------------------


def test_a_late_alarm_cuts_only_its_own_connection(dsn: str) -> None:
    """An interrupt that reached a health check just after it armed its deadline (the
    interrupt sweep found the line) left the alarm armed on a descriptor *number*. The
    connection was then closed, the next connection opened got the same number, and the
    alarm, firing on time, cut that one: its borrower saw "server closed the connection
    unexpectedly". An alarm now holds a duplicate of its own socket."""
    from pgpool import watchdog

    first = psycopg2.connect(dsn)
    number = first.fileno()
    alarm = watchdog.arm(first, 0.3)  # never disarmed, as if its owner had been interrupted
    first.close()
    # POSIX hands out the lowest free number: the next socket gets the closed one's, unless
    # another thread of the test process takes it meanwhile (then the test proves nothing).
    second = psycopg2.connect(dsn)
    try:
        if second.fileno() != number:
            pytest.skip("the descriptor number was not reused")
        # Until the alarm has fired (counted, not slept for: a loaded machine runs the
        # watchdog's thread late, and a check before it fires would prove nothing).
        wait_for(lambda: alarm.fired, what="the forgotten alarm firing")
        with second.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
    finally:
        second.close()


def _copies(fd: int) -> int:
    """How many of this process's descriptors refer to the same socket as `fd`."""
    target = os.readlink(f"/proc/self/fd/{fd}")
    count = 0
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
            count += os.readlink(f"/proc/self/fd/{name}") == target
    return count


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
@pytest.mark.parametrize(
    ("where", "text"),
    [("arm", "with _cond:"), ("disarm", "if not fired:")],
    ids=["in-arm-after-the-dup", "in-disarm-after-the-lock"],
)
def test_an_interrupted_health_check_leaves_no_duplicate_descriptor(
    dsn: str, where: str, text: str
) -> None:
    """An alarm duplicates its connection's descriptor. An interrupt landing in arm() after
    the duplicate was made (before the alarm was queued), or in disarm() after it let go of
    the watchdog's lock (before closing it), left the duplicate open for good: nobody held
    the alarm any more. It must be closed once the alarm is dropped."""
    from pgpool import watchdog
    from pgpool.connection import ping

    func = watchdog.arm if where == "arm" else watchdog.Alarm.disarm
    lines, first = inspect.getsourcelines(func)
    target = first + next(i for i, line in enumerate(lines) if text in line)
    fired: list[int] = []

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code is func.__code__ else None

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line" and frame.f_lineno == target and not fired:
            fired.append(target)
            raise KeyboardInterrupt(f"injected in {where}")
        return local

    conn = psycopg2.connect(dsn)
    try:
        before = _copies(conn.fileno())
        previous = sys.gettrace()
        sys.settrace(trace)
        try:
            ping(conn, 0.2)
        except KeyboardInterrupt:
            pass  # dropped with its traceback, as a handler would: its frames hold the alarm
        finally:
            sys.settrace(previous)
        assert fired

        def closed() -> bool:  # at the latest once the watchdog forgets it, at its deadline
            gc.collect()
            return _copies(conn.fileno()) == before

        wait_for(closed, timeout=5, what="the alarm's duplicate closed")
    finally:
        conn.close()


def _fails(code: int) -> Callable[..., Any]:
    """A stand-in for a system call that fails with `code`, as in a process out of
    descriptors (EMFILE) or memory (ENOMEM): what a real server cannot make happen on cue."""

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise OSError(code, os.strerror(code))

    return fail


class _StandIn:
    """A module as pgpool's code sees it, with one of its functions replaced (`_fails`):
    set on one pgpool module only, so the rest of the process is untouched."""

    def __init__(self, module: Any, name: str, replacement: Callable[..., Any]) -> None:
        self._module, self._name, self._replacement = module, name, replacement

    def __getattr__(self, name: str) -> Any:
        return self._replacement if name == self._name else getattr(self._module, name)


def _ping_fails(conn: Any) -> None:
    from pgpool.connection import ping

    assert ping(conn, 0.2) is False  # cannot be bounded: it fails (see the EMFILE test)


def _stopper_raises(conn: Any) -> None:
    from pgpool.stopper import Stopper

    with pytest.raises(OSError):
        Stopper(conn)


@pytest.mark.parametrize("attempt", [_ping_fails, _stopper_raises], ids=["alarm", "stopper"])
def test_a_duplicate_that_could_not_be_wrapped_is_closed(
    dsn: str, monkeypatch: pytest.MonkeyPatch, attempt: Callable[[Any], None]
) -> None:
    """A health check's alarm and a new connection's Stopper each keep a duplicate of the
    socket (watchdog.socket_copy). It was made before the socket object that holds it: when
    making the object failed, nothing held the duplicate and it stayed open for good."""
    from pgpool import watchdog

    conn = psycopg2.connect(dsn)
    try:
        before = _copies(conn.fileno())
        monkeypatch.setattr(watchdog, "socket", _StandIn(socket, "socket", _fails(errno.ENOMEM)))
        attempt(conn)
        monkeypatch.undo()
        assert _copies(conn.fileno()) == before
    finally:
        conn.close()


def test_a_connect_that_cannot_get_its_stopper_is_a_failed_connect(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of descriptors just after connecting, the new connection cannot get the duplicate
    its Stopper keeps. A bare OSError came out of getconn; now the caller gets what a failed
    connect gives (the driver's OperationalError, naming the cause), the connection is
    closed, and the pool connects again once descriptors are back."""
    from pgpool import stopper

    app = unique_app("stopper-emfile")
    pool = pgpool.SimpleConnectionPool(0, 1, pool_dsn(dsn, app))
    try:
        monkeypatch.setattr(stopper, "socket_copy", _fails(errno.EMFILE))  # the Stopper's only
        with pytest.raises(psycopg2.OperationalError, match="could not prepare") as raised:
            pool.getconn()
        assert isinstance(raised.value.__cause__, OSError)
        stats = pool.stats()
        assert (stats.size, stats.connect_errors, stats.connections_opened) == (0, 1, 0)
        wait_for(lambda: count_backends(dsn, app) == 0, what="the half-made connection closed")
        monkeypatch.undo()
        conn = pool.getconn(timeout=5)  # after the back-off: a connect that works
        assert scalar(conn, "SELECT 1") == 1
        pool.putconn(conn)
    finally:
        pool.closeall()


def test_a_health_check_that_cannot_arm_its_deadline_fails_the_connection_not_getconn(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no descriptor left, arming a health check's deadline (a duplicate of the
    socket) raised OSError out of getconn, and out of check(). Unbounded, a ping of a
    silent server could block far past the caller's deadline; so the connection counts as
    failed: it is closed (which gives two descriptors back), and the checkout goes on
    within its deadline, here with a new connection (handed over fresh: no check). The
    pool stays usable."""
    from pgpool import watchdog

    app = unique_app("emfile")
    clock = FakeClock()
    pool = pgpool.ThreadedConnectionPool(
        2, 2, pool_dsn(dsn, app), clock=clock, maintenance_interval=None, timeout=5
    )
    try:
        idle = [pool.getconn(), pool.getconn()]
        for conn in idle:
            pool.putconn(conn)
        clock.advance(pool._options.health_check_after + 1)  # idle long enough to be pinged
        # Only the alarm's copy fails: the new connection's Stopper still gets its own.
        monkeypatch.setattr(watchdog, "socket_copy", _fails(errno.EMFILE))
        conn = pool.getconn()  # each idle one fails its check; a new one is opened
        assert conn not in idle and scalar(conn, "SELECT 1") == 1
        stats = pool.stats()
        assert (stats.failed_checks, stats.connections_closed, stats.in_use) == (2, 2, 1)
        pool.putconn(conn)
        assert pool.check() == 1  # maintenance's check (pings every idle one): the same
        monkeypatch.undo()
        pool.check()  # refills to minconn
        conns = [pool.getconn(), pool.getconn()]  # usable again, its slots all there
        assert [scalar(c, "SELECT 1") for c in conns] == [1, 1]
        for conn in conns:
            pool.putconn(conn)
        with pool._lock:
            pool._state.check_invariants()
    finally:
        pool.closeall()


class FakeLibpq:
    """libpq's cancel functions, recording what is freed: the real ones would crash the test
    process on a double free or a use after free. PQcancel waits for `release_cancel`."""

    def __init__(self) -> None:
        self.freed: list[int] = []
        self.in_cancel = threading.Event()
        self.release_cancel = threading.Event()
        self.release_cancel.set()
        self.used_after_free = False

    def __call__(self) -> FakeLibpq:  # stands in for the cached loader, stopper._libpq
        return self

    def PQgetCancel(self, pgconn: object) -> int:
        return 1234

    def PQcancel(self, cancel: int, errbuf: object, size: int) -> int:
        self.in_cancel.set()
        self.release_cancel.wait(10)
        self.used_after_free |= cancel in self.freed
        return 1

    def PQfreeCancel(self, cancel: int) -> None:
        self.freed.append(cancel)


class NoSocket:
    """Just enough of a connection for a Stopper: a libpq handle, and no socket to cut."""

    pgconn_ptr = 1

    def fileno(self) -> int:
        raise psycopg2.InterfaceError("connection already closed")


@pytest.mark.parametrize("launched", [True, False], ids=["helper-ran", "helper-never-ran"])
def test_an_interrupted_cancel_frees_its_request_once(
    monkeypatch: pytest.MonkeyPatch, launched: bool
) -> None:
    """Thread.start() launches the thread and then waits for it to run: a KeyboardInterrupt
    in that wait raises from start() while the helper runs anyway. The cancel request was
    then freed twice (a double free in libpq's memory). It must be freed exactly once,
    whether the helper ran or not, when the stopper is released."""
    from pgpool import stopper as stopper_module

    libpq = FakeLibpq()
    monkeypatch.setattr(stopper_module, "_libpq", libpq)
    stopper = Stopper(NoSocket())
    start = threading.Thread.start

    def start_then_interrupt(thread: threading.Thread) -> None:
        if launched:
            start(thread)  # the helper runs...
            thread.join()
        raise KeyboardInterrupt  # ...but start() raised, as Ctrl-C in its wait can make it

    monkeypatch.setattr(threading.Thread, "start", start_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        stopper.cancel(0.5)
    assert libpq.freed == []  # still the connection's, until it is discarded
    stopper.release()
    stopper.release()
    assert libpq.freed == [1234]


def test_a_cancel_request_released_while_being_sent_is_freed_after_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The connection is discarded (its borrower closed it and returned it) while a reclaim
    is still sending its cancel request: the request must be freed once the helper is
    done with it, not under it."""
    from pgpool import stopper as stopper_module

    libpq = FakeLibpq()
    monkeypatch.setattr(stopper_module, "_libpq", libpq)
    stopper = Stopper(NoSocket())
    libpq.release_cancel.clear()
    delivered = stopper.send_cancel()
    assert libpq.in_cancel.wait(10)
    stopper.release()  # while PQcancel runs with the request
    assert libpq.freed == []
    libpq.release_cancel.set()
    assert delivered.wait(10)
    wait_for(lambda: libpq.freed == [1234], 5, "the request freed once the helper was done")
    assert not libpq.used_after_free
    stopper.release()
    assert libpq.freed == [1234]


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_stopper_holds_one_duplicate_until_released_then_does_nothing(dsn: str) -> None:
    """A Stopper keeps a duplicate of its connection's socket from connect to discard, so
    the socket's number is never reused meanwhile; once released, it holds no descriptor,
    and a late cut or cancel (a reclaim that lost the race) touches nothing."""
    conn = psycopg2.connect(dsn)
    target = os.readlink(f"/proc/self/fd/{conn.fileno()}")  # the socket, not its number

    def descriptors() -> int:
        names = os.listdir("/proc/self/fd")
        count = 0
        for name in names:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed since
                count += os.readlink(f"/proc/self/fd/{name}") == target
        return count

    try:
        assert descriptors() == 1
        stopper = Stopper(conn)
        assert descriptors() == 2
        stopper.cut()
        stopper.cut()  # already shut down: nothing left to cut, and no error
        with pytest.raises(psycopg2.OperationalError), conn.cursor() as cursor:
            cursor.execute("SELECT 1")  # the cut reached the connection's own socket
        held = descriptors()  # the duplicate, and libpq's own unless it dropped it on error
        stopper.release()
        assert descriptors() == held - 1
        stopper.cut()
        assert not stopper.cancel(0.5)
        # Nothing to send, so nothing to wait for: an event that is never set would make a
        # reclaim or closeall's deadline wait out the whole cancel timeout for nothing.
        assert stopper.send_cancel() is None
        stopper.release()
    finally:
        conn.close()
    assert descriptors() == 0


class Watched(psycopg2.extensions.connection):
    """A psycopg2 connection that records who reads what a cancel or a cut needs, and when:
    the handle of libpq's PGconn and the socket's descriptor number."""

    checked_out = False
    reads_after_checkout: list[str] = []

    @property
    def pgconn_ptr(self) -> int | None:
        self._note("pgconn_ptr")
        value: int | None = psycopg2.extensions.connection.pgconn_ptr.__get__(self)
        return value

    def fileno(self) -> int:
        self._note("fileno")
        return super().fileno()

    def _note(self, what: str) -> None:
        if Watched.checked_out and threading.current_thread().name != "borrower":
            Watched.reads_after_checkout.append(what)


@pytest.mark.timeout(60)
def test_stopping_a_borrowed_connection_never_reads_it(dsn: str) -> None:
    """A reclaim and closeall's deadline stop connections their borrowers may be closing
    at that very moment. They read `conn.pgconn_ptr` (for libpq's PQgetCancel) and
    `conn.fileno()` (to cut the socket) from the connection then: a close() in between
    freed the PGconn under PQgetCancel, or handed the descriptor number to another
    connection. What they need must have been taken when the connection was opened."""
    app = unique_app("stop-reads")
    clock = FakeClock()
    pool = pgpool.ThreadedConnectionPool(
        0, 2, pool_dsn(dsn, app), connection_factory=Watched, clock=clock,
        maintenance_interval=None, max_lease=5.0,
    )  # fmt: skip
    try:
        reclaimed, drained = pool.getconn(), pool.getconn()
        busy = [
            in_thread(lambda c=c: scalar(c, "SELECT pg_sleep(30)"), "borrower")  # type: ignore[misc]
            for c in (reclaimed, drained)
        ]
        wait_for(lambda: count_backends(dsn, app) == 2, what="two connections")
        Watched.checked_out, Watched.reads_after_checkout = True, []
        clock.advance(6)
        pool.maintain()  # reclaims both: past max_lease
        assert pool.stats().leases_reclaimed == 2
        for thread, outcome in busy:
            thread.join(15)
            assert isinstance(outcome.error, psycopg2.DatabaseError), outcome  # stopped
    finally:
        Watched.checked_out = False
        pool.closeall()
    assert Watched.reads_after_checkout == []


RACE_A_CLOSE_INTO_A_RECLAIM = """
import logging
import sys
from pathlib import Path
import pgpool

logging.getLogger("pgpool").setLevel(logging.ERROR)  # not each reclaim's warning

PACKAGE = Path(pgpool.__file__).resolve().parent
TARGETS = {str(PACKAGE / name) for name in ("maintenance.py", "connection.py", "stopper.py")}


class Clock:
    now = 0.0

    def __call__(self):
        return self.now


step, fired = 0, [True]
while fired:
    clock = Clock()
    pool = pgpool.ThreadedConnectionPool(
        0, 1, sys.argv[1], clock=clock, maintenance_interval=None, max_lease=5.0
    )
    conn = pool.getconn()
    clock.now += 6  # the lease is past max_lease: the next maintenance pass reclaims it
    lines, fired = [0], []

    def on_line(frame, event, arg):
        if event == "line" and not fired:
            if lines[0] == step:
                fired.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}")
                print("close before", *fired, flush=True)
                conn.close()  # the borrower closes its connection, right here
            lines[0] += 1
        return on_line

    sys.settrace(lambda frame, event, arg: on_line if frame.f_code.co_filename in TARGETS else None)
    try:
        pool.maintain()
    finally:
        sys.settrace(None)
    stats = pool.stats()
    assert stats.leases_reclaimed == 1 and stats.in_use == 0, (fired, stats)
    pool.closeall()
    step += 1
print("survived", step - 1, flush=True)
"""


@pytest.mark.timeout(120)
def test_a_borrower_closing_during_a_reclaim_crashes_nothing(dsn: str) -> None:
    """The borrower of a connection that maintenance reclaims closes it at each line of the
    reclaim in turn. The reclaim read `conn.pgconn_ptr` and then called libpq's PQgetCancel
    on it: a close() in between freed the PGconn, and the process died with SIGSEGV (glibc
    fills freed memory with MALLOC_PERTURB_'s byte, so the read of freed memory shows).
    Run in a child process, so that a crash fails this test instead of the suite."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", RACE_A_CLOSE_INTO_A_RECLAIM, dsn],
        capture_output=True, text=True, timeout=100, cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "MALLOC_PERTURB_": "165"},
    )  # fmt: skip
    lines = done.stdout.splitlines()
    assert done.returncode == 0, (
        f"exit status {done.returncode}, last {lines[-1:]}:\n{done.stderr[-2000:]}"
    )
    assert lines[-1].startswith("survived") and int(lines[-1].split()[1]) > 20

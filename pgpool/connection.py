"""What the pool does *to* a connection: open it, check it, clean it, close it.

These are the pool's hands: each function here talks to the server (or may block on the
network), so the pool only ever calls them after releasing its lock. None of them touches
the pool's bookkeeping. A failure is reported as a return value or as the driver's own
exception; nothing here is retried (the pool decides that).
"""

from __future__ import annotations

import contextlib
import os
import re
import select
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import psycopg2
import psycopg2.extensions as ext

from . import watchdog
from .log import logger

if TYPE_CHECKING:
    from .state import Slot

# The session attributes psycopg2 exposes and the pool restores on every return. They are
# local to the connection object (psycopg2 sends them with each BEGIN), so checking and
# restoring them costs no round trip.
SESSION_ATTRIBUTES = ("autocommit", "isolation_level", "readonly", "deferrable")


def session_defaults(conn: Any) -> tuple[Any, ...]:
    """The values of SESSION_ATTRIBUTES now, recorded when a connection is opened."""
    return (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)


def restore_session(conn: Any, defaults: tuple[Any, ...], force: bool = False) -> None:
    """Set back every session attribute that a borrower changed. Needs an idle connection.

    In autocommit mode psycopg2 keeps isolation_level/readonly/deferrable on the *server*
    (`SET default_transaction_...`) and caches them on the client. Turning autocommit off
    and on, or a reset like DISCARD ALL, clears the server's copy behind the cache's back,
    so after any change (or with `force`, after a reset) they are sent again.
    """
    changed = False
    for attribute, value in zip(SESSION_ATTRIBUTES, defaults, strict=True):
        if getattr(conn, attribute) != value:
            setattr(conn, attribute, value)
            changed = True
    if (changed or force) and defaults[0]:
        for attribute, value in zip(SESSION_ATTRIBUTES[1:], defaults[1:], strict=True):
            if value is not None:
                setattr(conn, attribute, value)  # psycopg2 sends the SET even if unchanged


def is_reusable(conn: Any) -> bool:
    """Open and idle: the cheap test that needs no round trip.

    Idle takes two readings, libpq's and psycopg2's, because each misses a case: a BEGIN
    sent by hand in autocommit mode is seen only by libpq (psycopg2's status stays READY),
    and a two-phase transaction after `tpc_prepare()` only by psycopg2 (libpq reports IDLE
    while psycopg2 is in BEGIN or PREPARED, and would send the next statement without a
    BEGIN, autocommitting it). putconn's fast path (pool.py) inlines this test.
    """
    return (
        not conn.closed
        and conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        and conn.status == ext.STATUS_READY
    )


def clean(conn: Any, defaults: tuple[Any, ...], encoding: str, reset: Any) -> bool:
    """Bring a returned connection back to the state it had when opened.

    Rolls back an open or failed transaction (a two-phase one too, prepared or not: see
    `is_reusable`), restores the session attributes and runs the user's `reset` callback.
    Returns False if the connection is closed, broken (status UNKNOWN), or if any step
    failed: the caller must then discard it. psycopg2.pool leaks the slot when its rollback
    raises; here a failure only means "discard".
    """
    if conn.closed:
        return False
    try:
        status = conn.get_transaction_status()
        if status == ext.TRANSACTION_STATUS_UNKNOWN:
            return False
        if status != ext.TRANSACTION_STATUS_IDLE or conn.status != ext.STATUS_READY:
            _roll_back(conn)
        restore_session(conn, defaults)
        if reset is not None:
            reset(conn)
            if not is_reusable(conn):
                _roll_back(conn)  # the reset callback left a transaction open
            restore_session(conn, defaults, force=True)
            # A reset like DISCARD ALL puts the server's client_encoding back to its default
            # behind psycopg2's back: set it again, so both sides agree on the encoding.
            conn.set_client_encoding(encoding)
            # psycopg2 keeps what the server sent in client-side lists: wipe them too, or
            # the next borrower reads the last one's notifications and notices.
            del conn.notifies[:]
            del conn.notices[:]
    except Exception:
        logger.warning("discarding a connection that could not be cleaned", exc_info=True)
        return False
    return not conn.closed and conn.status == ext.STATUS_READY


def _roll_back(conn: Any) -> None:
    if conn.status == ext.STATUS_PREPARED:
        # A prepared transaction outlives its session (closing would not end it) and keeps
        # its locks: ROLLBACK PREPARED is the only way to end it.
        conn.tpc_rollback()
    else:
        try:
            conn.rollback()
        except psycopg2.ProgrammingError:
            # Inside a two-phase transaction (tpc_begin) psycopg2 refuses rollback(); its
            # tpc_prepare() may also have failed, which left libpq idle and psycopg2 not.
            conn.tpc_rollback()
    if conn.get_transaction_status() != ext.TRANSACTION_STATUS_IDLE:
        # A BEGIN sent by hand in autocommit mode: psycopg2's rollback() only ends the
        # transactions it began itself, so end this one with SQL.
        with conn.cursor() as cursor:
            cursor.execute("ROLLBACK")


def ping(conn: Any, timeout: float) -> bool:
    """One cheap round trip: does the server still answer on this connection, in time?

    `SELECT 1` in autocommit, so psycopg2 sends no BEGIN (one round trip, not three). A
    server that does not answer within `timeout` seconds counts as dead: the watchdog cuts
    the socket, which is the only way to stop a synchronous query on a silent network.
    A ping that cannot be given that deadline (no descriptor left for the watchdog's
    duplicate: EMFILE) is not sent, and the connection counts as dead too.
    """
    if conn.closed:
        return False
    autocommit = conn.autocommit
    alarm = None
    try:
        # Armed inside the try: an exception arriving right after would otherwise leave it
        # armed, to cut this socket later while someone else may be using the connection.
        try:
            alarm = watchdog.arm(conn, timeout)
        except OSError as error:
            # Unbounded, a ping of a silent server could block for minutes, far past the
            # caller's deadline; an OSError out of getconn would leave the caller nothing
            # to do. Failing the check keeps both promises: the pool closes the connection
            # (which gives back its descriptor and its stopper's), and a checkout goes on
            # with another one within its deadline.
            logger.warning("cannot bound a health check, so it fails: %s", error)
            return False
        if not autocommit:
            conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        if not autocommit:
            conn.autocommit = False
    except psycopg2.Error:
        return False
    finally:
        cut = alarm is not None and alarm.disarm()
    return not cut


def readable(fds: list[int]) -> list[int]:
    """The descriptors among `fds` with something to read now (no waiting).

    An idle connection has nothing to say. If its socket is readable, the server has sent
    something on its own: a FATAL message before closing (restart, pg_terminate_backend),
    end-of-file, or a NOTIFY for a LISTENing session. Only such connections need a ping.
    """
    if not hasattr(select, "poll"):  # pragma: no cover - Windows
        return select.select(fds, [], [], 0)[0]
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    events = select.POLLIN | select.POLLHUP | select.POLLERR
    return [fd for fd, event in poller.poll(0) if event & events]


def close_quietly(conn: Any) -> None:
    """Close a connection the pool gives up on; an error here changes nothing."""
    try:
        conn.close()
    except Exception:
        logger.debug("error closing a connection", exc_info=True)


def discard(slot: Slot) -> None:
    """Close a pooled connection for good: the connection, then what its slot kept to stop
    it (its Stopper, of no use once the connection is closed). Lock not held. Every
    connection the pool had a slot for leaves this way."""
    try:
        close_quietly(slot.conn)
    finally:
        if slot.stopper is not None:
            slot.stopper.release()


def passwords_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """Every password the connection arguments carry: in a DSN or URI, as `password=`, or
    in PGPASSWORD. Used only to scrub them from error messages."""
    found = [str(kwargs["password"])] if kwargs.get("password") else []
    for dsn in (*args[:1], kwargs.get("dsn")):
        if isinstance(dsn, str) and dsn:
            with contextlib.suppress(psycopg2.Error):
                found.append(ext.parse_dsn(dsn).get("password", ""))
            # A DSN with a typo may parse wrongly or not at all: guess as well, so a piece of
            # the password that libpq quotes back is masked too.
            found.extend(_password_guesses(dsn))
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    return [p for p in found if p]


def _password_guesses(dsn: str) -> list[str]:
    """What may be a password in a DSN that libpq could not parse, in pieces.

    libpq quotes the piece it choked on, which may be a fragment of the password (it split
    an unquoted space, or a '/' in a URI): mask every fragment, not only the whole.
    """
    found = re.findall(r"password\s*=\s*(.*?)(?=\s+\w+\s*=|$)", dsn)  # key=value, to next key
    userinfo = re.match(r"^\w+://([^@]*)@", dsn)  # URI: between "scheme://" and the last "@"
    if userinfo and ":" in userinfo.group(1):
        found.append(userinfo.group(1).split(":", 1)[1])
    guesses: list[str] = []
    for whole in found:
        for candidate in (whole, unquote(whole)):
            guesses.append(candidate)
            guesses += [f for f in re.split(r"[\s/?&=@:'\"#]+", candidate) if len(f) >= 3]
    return guesses


def connect(connector: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Open a connection with `connector(*args, **kwargs)`; raise its error password-free.

    An error whose chain mentions a password is replaced by a scrubbed copy, raised outside
    the ``except`` block so that the original is not attached to it as ``__context__``:
    error trackers and structured loggers walk the whole chain and would send it on.
    """
    try:
        conn = connector(*args, **kwargs)
    except Exception as error:
        scrubbed = scrub(error, passwords_in(args, kwargs))
        if scrubbed is error:
            raise
    else:
        if not all(hasattr(conn, name) for name in PSYCOPG2_API):
            with contextlib.suppress(Exception):
                conn.close()
            raise TypeError(
                f"the connector returned {type(conn).__module__}.{type(conn).__qualname__}, "
                "not a psycopg2 connection: pgpool pools psycopg2 connections (a "
                "psycopg2.extensions.connection, as psycopg2.connect returns); for psycopg 3 "
                "use psycopg_pool"
            )
        return conn
    raise scrubbed


# What the pool uses of a connection beyond close(), and that a psycopg 3 connection (the
# likeliest wrong connector) lacks: checked once per connect, so a wrong connector fails at
# the first connect with a clear TypeError instead of an AttributeError much later.
PSYCOPG2_API = ("get_transaction_status", "readonly", "set_client_encoding")


def _chain(error: BaseException) -> list[BaseException]:
    """`error` and every exception linked to it by __cause__ or __context__."""
    seen: list[BaseException] = []
    pending: list[BaseException | None] = [error]
    while pending:
        current = pending.pop()
        if current is None or any(current is e for e in seen):
            continue
        seen.append(current)
        pending += [current.__cause__, current.__context__]
    return seen


def _mentions(error: BaseException, passwords: list[str]) -> bool:
    for linked in _chain(error):
        text = " ".join([str(linked), *map(repr, linked.args), *getattr(linked, "__notes__", [])])
        if any(p in text for p in passwords):
            return True
    return False


def scrub(error: BaseException, passwords: list[str]) -> BaseException:
    """`error`, or a copy of the same type whose message has every password masked.

    libpq quotes pieces of a malformed DSN in its messages ('missing "=" after "..."'),
    which can include the password. The copy keeps the type, so `except` clauses still match,
    and carries nothing else of the original: no arguments, notes or chained exceptions.
    """
    if not _mentions(error, passwords):
        return error
    message = str(error)
    for password in sorted(passwords, key=len, reverse=True):  # the whole before its pieces
        message = message.replace(password, "********")
    try:
        return type(error)(message)
    except Exception:
        return psycopg2.OperationalError(message)


def disown(conn: Any, devnull: int) -> None:
    """Make a connection inherited through fork() harmless in the child process.

    Closing it (or letting it be garbage-collected) would send the server a Terminate
    message on the socket the parent still uses, ending the *parent's* session. Pointing
    the child's copy of the file descriptor at /dev/null leaves the parent's socket alone:
    whatever the child later writes goes nowhere.
    """
    try:
        fd = conn.fileno()
    except Exception:
        return  # already closed: nothing is shared any more
    os.dup2(devnull, fd)

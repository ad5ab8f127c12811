"""What the pool does *to* a connection: open it, check it, clean it, close it.

These are the pool's hands: each function here talks to the server (or may block on the
network), so the pool only ever calls them after releasing its lock. None of them touches
the pool's bookkeeping. A failure is reported as a return value or as the driver's own
exception; nothing here is retried (the pool decides that).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import psycopg2
import psycopg2.extensions as ext

logger = logging.getLogger("pgpool")

# The session attributes psycopg2 exposes and the pool restores on return. They are local
# to the connection object (psycopg2 sends them with each BEGIN), so restoring them costs
# no round trip.
SESSION_ATTRIBUTES = ("autocommit", "isolation_level", "readonly", "deferrable")


def session_defaults(conn: Any) -> tuple[Any, ...]:
    """The values of SESSION_ATTRIBUTES now, recorded when a connection is opened."""
    return (conn.autocommit, conn.isolation_level, conn.readonly, conn.deferrable)


def restore_session(conn: Any, defaults: tuple[Any, ...]) -> None:
    """Set back every session attribute that a borrower changed. Needs an idle connection."""
    for attribute, value in zip(SESSION_ATTRIBUTES, defaults, strict=True):
        if getattr(conn, attribute) != value:
            setattr(conn, attribute, value)


def is_reusable(conn: Any) -> bool:
    """Open and idle (no transaction): the cheap test that needs no round trip."""
    return not conn.closed and conn.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE


def clean(conn: Any, defaults: tuple[Any, ...], reset: Any) -> bool:
    """Bring a returned connection back to the state it had when opened.

    Rolls back an open or failed transaction, restores the session attributes and runs the
    user's `reset` callback. Returns False if the connection is closed, broken (status
    UNKNOWN), or if any step failed: the caller must then discard it. psycopg2.pool leaks
    the slot when its rollback raises; here a failure only means "discard".
    """
    if conn.closed:
        return False
    try:
        status = conn.get_transaction_status()
        if status == ext.TRANSACTION_STATUS_UNKNOWN:
            return False
        if status != ext.TRANSACTION_STATUS_IDLE:
            conn.rollback()
        restore_session(conn, defaults)
        if reset is not None:
            reset(conn)
            if conn.get_transaction_status() != ext.TRANSACTION_STATUS_IDLE:
                conn.rollback()  # the reset callback left a transaction open
            restore_session(conn, defaults)
    except Exception:
        logger.warning("discarding a connection that could not be cleaned", exc_info=True)
        return False
    return not conn.closed


def ping(conn: Any) -> bool:
    """One cheap round trip: does the server still answer on this connection?

    `SELECT 1` in autocommit, so psycopg2 sends no BEGIN (one round trip, not three).
    """
    if conn.closed:
        return False
    autocommit = conn.autocommit
    try:
        if not autocommit:
            conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        if not autocommit:
            conn.autocommit = False
    except psycopg2.Error:
        return False
    return True


def close_quietly(conn: Any) -> None:
    """Close a connection the pool gives up on; an error here changes nothing."""
    try:
        conn.close()
    except Exception:
        logger.debug("error closing a connection", exc_info=True)


def passwords_in(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[str]:
    """Every password the connection arguments carry: in a DSN or URI, as `password=`, or
    in PGPASSWORD. Used only to scrub them from error messages."""
    found = [str(kwargs["password"])] if kwargs.get("password") else []
    for dsn in (*args[:1], kwargs.get("dsn")):
        if isinstance(dsn, str) and dsn:
            try:
                found.append(ext.parse_dsn(dsn).get("password", ""))
            except psycopg2.Error:
                # Unparsable: guess at the likely spellings so a typo near it cannot leak it.
                found.extend(_password_guesses(dsn))
    if os.environ.get("PGPASSWORD"):
        found.append(os.environ["PGPASSWORD"])
    return [p for p in found if p]


def _password_guesses(dsn: str) -> list[str]:
    import re
    from urllib.parse import unquote

    guesses = re.findall(r"password\s*=\s*'?([^'\s]+)", dsn)
    guesses += [unquote(m) for m in re.findall(r"://[^:/@]*:([^@/]*)@", dsn)]
    guesses += re.findall(r"://[^:/@]*:([^@/]*)@", dsn)
    return guesses


def scrub(error: BaseException, passwords: list[str]) -> BaseException:
    """`error`, or a copy of the same type whose message has every password masked.

    libpq quotes pieces of a malformed DSN in its messages ('missing "=" after "..."'),
    which can include the password. The copy keeps the type, so `except` clauses still match.
    """
    message = str(error)
    if not any(p in message for p in passwords):
        return error
    for password in passwords:
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

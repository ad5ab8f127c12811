"""Ready-made `reset` callbacks: wipe what one borrower left in the session.

By default pgpool returns a connection with its transaction rolled back and the session
attributes psycopg2 knows about (`autocommit`, `isolation_level`, `readonly`, `deferrable`)
restored. It does *not* undo what was done with SQL: `SET ROLE`, `SET search_path` and other
`SET`s, temporary tables, prepared statements, advisory locks, `LISTEN`. When borrowers
must not see each other's leftovers (several tenants, or code you do not trust), pass one
of these as `reset=`. Each costs one round trip per return.

    pool = pgpool.ThreadedConnectionPool(1, 10, dsn, reset=pgpool.discard_all)
"""

from __future__ import annotations

from typing import Any

# DISCARD ALL, spelled out as separate commands. DISCARD ALL refuses to run inside a
# transaction block (including the implicit one of a multi-statement query), and some
# proxies in front of PostgreSQL refuse it outright; these commands run anywhere. Left out:
# DISCARD PLANS and DISCARD SEQUENCES, caches that carry nothing from one borrower to the next.
_RESET_SESSION = """
CLOSE ALL;
SET SESSION AUTHORIZATION DEFAULT;
RESET ALL;
DEALLOCATE ALL;
UNLISTEN *;
SELECT pg_advisory_unlock_all();
DISCARD TEMP;
"""


def _run_in_autocommit(conn: Any, sql: str) -> None:
    # Session commands must not run in a transaction (DISCARD ALL refuses to): use autocommit,
    # which psycopg2 switches locally, with no round trip. The pool restores the attribute.
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(sql)


def discard_all(conn: Any) -> None:
    """`DISCARD ALL`: the session as new — role, settings, temp tables, prepared statements,
    cursors, advisory locks, LISTEN, cached plans and sequences all reset."""
    _run_in_autocommit(conn, "DISCARD ALL")


def reset_session(conn: Any) -> None:
    """What `DISCARD ALL` does, as separate commands (see `_RESET_SESSION`), for where
    `DISCARD ALL` itself is not allowed."""
    _run_in_autocommit(conn, _RESET_SESSION)

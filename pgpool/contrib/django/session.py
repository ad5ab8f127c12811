"""What Django does to a new connection, done once per physical connection.

Django's postgresql backend sets up every connection it opens: the isolation level of
``OPTIONS``, autocommit, ``SET ROLE`` for ``OPTIONS["assume_role"]``, the session time
zone, and a jsonb loader. With a pool, a connection is opened once and lent many times,
so this is the pool's ``configure`` callback: it runs once, on the pool's connector
thread, and holds no `DatabaseWrapper` (a wrapper belongs to one thread).

pgpool records the psycopg2 attributes set here (autocommit, isolation level) as the
connection's defaults and restores them when a borrower changed them, at no round trip.
The time zone is a SQL setting, which pgpool does not restore; but the server reports it
(ParameterStatus), so `set_time_zone` can tell at no round trip whether a borrower changed
it, and the backend calls it at each checkout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg2.extras

# Django's DatabaseOperations.set_time_zone_sql(): a function call, so it can be a parameter.
SET_TIME_ZONE = "SELECT set_config('TimeZone', %s, false)"


def set_time_zone(conn: Any, name: str | None) -> bool:
    """Set the session's time zone to `name` unless the server reports it already (no round
    trip then). Returns whether it sent the statement; the caller commits if needed."""
    if not name or conn.info.parameter_status("TimeZone") == name:
        return False
    with conn.cursor() as cursor:
        cursor.execute(SET_TIME_ZONE, [name])
    return True


def _as_is(value: str) -> str:
    return value


@dataclass(frozen=True, slots=True)
class SessionSetup:
    """The pool's ``configure`` callback: Django's per-connection set-up (see above)."""

    autocommit: bool  # settings AUTOCOMMIT: what Django sets on each connection
    isolation_level: int | None  # OPTIONS["isolation_level"], None for the server's
    time_zone: str | None  # the wrapper's timezone_name when the pool was made
    role: str | None  # OPTIONS["assume_role"]

    def __call__(self, conn: Any) -> None:
        # Django's psycopg2 path registers this on each connection: JSONField decodes
        # itself, so psycopg2 must hand over the text (a loader per connection, not global).
        psycopg2.extras.register_default_jsonb(conn_or_curs=conn, loads=_as_is)
        if self.isolation_level is not None:
            conn.isolation_level = self.isolation_level  # before autocommit, as Django does
        conn.autocommit = self.autocommit
        if self.role:
            with conn.cursor() as cursor:
                cursor.execute("SET ROLE %s", [self.role])
        set_time_zone(conn, self.time_zone)
        if not conn.autocommit:
            conn.commit()

"""What every step shares: its two errors and a server to run the demonstrations on."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class PoolTimeout(Exception):
    """getconn waited `timeout` seconds and no connection became free."""


class PoolClosed(Exception):
    """The pool was closed (before the call, or while the caller waited)."""


class PoolMisuse(Exception):
    """putconn was given a connection that is not checked out from this pool."""


@contextmanager
def server() -> Iterator[str]:
    """Yield a DSN: ``PGPOOL_DSN`` if set, else a throwaway embedded PostgreSQL's."""
    dsn = os.environ.get("PGPOOL_DSN")
    if dsn:
        yield dsn
        return
    from testbed.embedded import EmbeddedPostgres

    with EmbeddedPostgres() as pg:
        yield pg.dsn


def select_one(conn: Any) -> None:
    """One round trip on `conn`: the smallest unit of work a pool serves."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()

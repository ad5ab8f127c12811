"""The backend: Django's postgresql `DatabaseWrapper`, with connections lent by pgpool.

Django opens a connection when a thread first needs one and closes it at the end of each
request (``CONN_MAX_AGE = 0``). This subclass changes only where a connection comes from
and where it goes: `get_new_connection` checks one out of the process's pool for this
alias (registry.py), `_close` returns it. Every other hook below exists because some
Django behaviour, left alone, would be wrong with a pool; each says which.

Django on psycopg2 only: Django picks psycopg 3 whenever it can import it, and its 5.1+
backend then has a pool of its own. This module refuses to load in that case.
"""

from __future__ import annotations

import os
import weakref
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db.backends.base.base import NO_DB_ALIAS, BaseDatabaseWrapper
from django.db.backends.postgresql import base as postgresql
from django.db.backends.postgresql.creation import DatabaseCreation as PostgresCreation
from django.db.backends.postgresql.psycopg_any import IsolationLevel, is_psycopg3
from django.utils.asyncio import async_unsafe

from ...threaded import ThreadedConnectionPool
from . import options, registry
from .session import SessionSetup, set_time_zone

if is_psycopg3:
    raise ImproperlyConfigured(
        "pgpool.contrib.django pools psycopg2 connections, but Django is using psycopg 3 "
        f"({postgresql.Database.__version__}): it prefers psycopg 3 whenever it can import "
        "it. Uninstall psycopg (psycopg 3) to use this ENGINE, or keep psycopg 3 and use "
        "Django's own pool: ENGINE 'django.db.backends.postgresql' with OPTIONS['pool'] "
        "(Django 5.1+)."
    )

# Settings under OPTIONS that are this backend's, not libpq's: kept out of psycopg2.connect.
NOT_FOR_LIBPQ = ("pool", "assume_role")


class DatabaseCreation(PostgresCreation):
    """The test database's creation, cloning and removal, with this alias's pools closed
    first: ``CREATE DATABASE ... TEMPLATE`` (``--parallel``) and ``DROP DATABASE`` fail
    while other sessions are connected, and a pool keeps its connections open. Django
    5.1+ does this for the clone and the drop; 4.2 has no pool to close."""

    def _create_test_db(self, verbosity: int, autoclobber: bool, keepdb: bool = False) -> Any:
        self.connection.close_pool()  # autoclobber drops an old test database first
        return super()._create_test_db(verbosity, autoclobber, keepdb)

    def _clone_test_db(self, suffix: str, verbosity: int, keepdb: bool = False) -> Any:
        self.connection.close()
        self.connection.close_pool()
        return super()._clone_test_db(suffix, verbosity, keepdb)

    def _destroy_test_db(self, test_database_name: str, verbosity: int) -> Any:
        self.connection.close_pool()
        return super()._destroy_test_db(test_database_name, verbosity)


class DatabaseWrapper(postgresql.DatabaseWrapper):
    """Django's postgresql backend whose connections come from a pgpool pool.

    Pooling is on unless ``OPTIONS["pool"]`` is false; options.py reads its settings. The
    pool of this alias is `pgpool_pool`; `close_pool()` closes it (the next checkout makes
    a new one).
    """

    creation_class = DatabaseCreation
    # Set by Django's BaseDatabaseWrapper (untyped): declared for the type checker.
    settings_dict: dict[str, Any]
    connection: Any

    # The pool the current connection was lent by, or None (not pooled, or no connection):
    # `_close` returns it there even if the settings changed meanwhile.
    _lender: ThreadedConnectionPool | None = None

    # Django 5.1+ reads `pool` to take its psycopg 3 pool's code path: a truthy value would
    # skip the session's time zone and role in init_connection_state, and call psycopg_pool
    # methods. This backend's pool is `pgpool_pool`; `pool` stays None on every version.
    @property
    def pool(self) -> None:
        return None

    @property
    def pgpool_pool(self) -> ThreadedConnectionPool | None:
        """This alias's pool for the current settings (made on first use), or None when
        this database is not pooled."""
        return self._pool_for(self.get_connection_params())

    def close_pool(self) -> None:
        """Close this alias's pools: idle connections now, checked-out ones as they come
        back. Django calls it around test databases; the next checkout makes a new pool."""
        registry.close_pools(self.alias)

    def _pool_for(self, conn_params: dict[str, Any]) -> ThreadedConnectionPool | None:
        # NO_DB_ALIAS is Django's short-lived connection to the 'postgres' database (to
        # create or drop a test database): never pooled, as in Django's own pool.
        if self.alias == NO_DB_ALIAS or not options.pool_enabled(self.settings_dict):
            return None
        # Keyed by the connection parameters too: the test runner renames NAME in place.
        key = repr(sorted(conn_params.items()))
        return registry.pool_for(self.alias, key, lambda: self._make_pool(conn_params))

    def _make_pool(self, conn_params: dict[str, Any]) -> ThreadedConnectionPool:
        arguments = options.pool_arguments(self.alias, self.settings_dict)
        setup = SessionSetup(
            autocommit=self.settings_dict["AUTOCOMMIT"],
            isolation_level=_isolation_level(self.settings_dict["OPTIONS"]),
            time_zone=self.timezone_name,
            role=self.settings_dict["OPTIONS"].get("assume_role"),
        )
        user_configure = arguments.pop("configure", None)
        configure: Any = setup if user_configure is None else _Both(setup, user_configure)
        minconn, maxconn = arguments.pop("minconn"), arguments.pop("maxconn")
        try:
            return ThreadedConnectionPool(
                minconn, maxconn, **conn_params, **arguments,
                configure=configure, name=self.alias, open=False,
            )  # fmt: skip
        except (TypeError, ValueError) as error:  # a bad value: the pool names the option
            raise ImproperlyConfigured(
                f"DATABASES[{self.alias!r}]['OPTIONS']['pool']: {error}"
            ) from error

    # -- where a connection comes from and goes -------------------------------------------

    def get_connection_params(self) -> dict[str, Any]:
        # Django's own, without this backend's settings: 4.2 would hand "pool" to
        # psycopg2.connect, 5.1+ raises "Database pooling requires psycopg >= 3". The shared
        # settings_dict must not change (every thread's wrapper reads the same dict, and the
        # test runner edits it in place): Django's method reads a copy, on this wrapper only.
        shared = self.settings_dict
        own = {k: v for k, v in shared["OPTIONS"].items() if k not in NOT_FOR_LIBPQ}
        self.settings_dict = {**shared, "OPTIONS": own}
        try:
            params: dict[str, Any] = super().get_connection_params()
        finally:
            self.settings_dict = shared
        return params

    @async_unsafe
    def get_new_connection(self, conn_params: dict[str, Any]) -> Any:
        pool = self._pool_for(conn_params)
        if pool is None:
            return super().get_new_connection(conn_params)
        # What Django's method sets besides the connection; the pool's configure did the
        # rest once per physical connection (session.py).
        level = _isolation_level(self.settings_dict["OPTIONS"])
        self.isolation_level = IsolationLevel.READ_COMMITTED if level is None else level
        connection = pool.getconn()
        self._lender = pool
        _lenders.add(self)
        return connection

    def init_connection_state(self) -> None:
        if self._lender is None:
            super().init_connection_state()
            return
        # Django's would SET ROLE on every checkout (a round trip): configure did it once.
        # Its version check runs once per alias, as before.
        BaseDatabaseWrapper.init_connection_state(self)
        # A borrower may have changed the time zone with SQL, which pgpool does not undo;
        # the server reports the zone, so checking costs no round trip.
        if set_time_zone(self.connection, self.timezone_name) and not self.get_autocommit():
            self.connection.commit()

    def _close(self) -> Any:
        pool = self._lender
        if pool is None:
            return super()._close()
        # Let go of the connection *before* returning it: closed inside atomic(), Django's
        # close() keeps self.connection until the block exits, and the pool may have lent
        # the connection to another thread by then. None makes a query here fail instead.
        connection, self.connection, self._lender = self.connection, None, None
        with self.wrap_database_errors:
            pool.putconn(connection)
        return None

    def ensure_timezone(self) -> bool:
        # Called when TIME_ZONE or USE_TZ change (override_settings). Django 5.1+ closes
        # its pool here so that new connections get the new zone; each checkout sets it
        # here (init_connection_state), so the pool and its connections stay.
        if self.connection is None:
            return False
        return set_time_zone(self.connection, self.timezone_name)


def _isolation_level(settings_options: dict[str, Any]) -> Any:
    """OPTIONS["isolation_level"] checked as Django checks it, or None if not set."""
    if "isolation_level" not in settings_options:
        return None
    value = settings_options["isolation_level"]
    try:
        return IsolationLevel(value)
    except ValueError:
        # Django's own wording (django/db/backends/postgresql/base.py).
        raise ImproperlyConfigured(
            f"Invalid transaction isolation level {value} specified. Use one of the "
            "psycopg.IsolationLevel values."
        ) from None


class _Both:
    """Django's set-up, then the user's own ``configure``."""

    def __init__(self, first: SessionSetup, then: Any) -> None:
        self.first, self.then = first, then

    def __call__(self, conn: Any) -> None:
        self.first(conn)
        self.then(conn)


# Wrappers that have held a pooled connection. A forked child inherits each thread's
# wrapper with the parent's connection in it; pgpool's fork handler has pointed that socket
# at /dev/null, so the child's wrappers drop it and check out their own on next use.
_lenders: weakref.WeakSet[DatabaseWrapper] = weakref.WeakSet()


def _forget_connections_in_child() -> None:
    for wrapper in list(_lenders):
        if wrapper._lender is not None:
            wrapper.connection, wrapper._lender = None, None


os.register_at_fork(after_in_child=_forget_connections_in_child)

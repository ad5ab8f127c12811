"""``OPTIONS["pool"]``: from Django's settings to the pool's arguments, checked up front.

Django 5.1 documents ``OPTIONS["pool"]`` for its psycopg 3 pool: ``True`` for the defaults,
or a dict of psycopg_pool's arguments. The same names are accepted here and mapped onto
pgpool's options, with pgpool's own beside them:

========================  ===========================================================
psycopg_pool's name       here
========================  ===========================================================
``min_size``              ``minconn`` (default 4, as psycopg_pool; at most ``max_size``)
``max_size``              ``maxconn`` (default ``min_size``, as psycopg_pool)
``timeout``, ``max_waiting``, ``max_idle``, ``max_lifetime``, ``reconnect_timeout``,
``reconnect_failed``      the same meaning and defaults
(pgpool's own)            ``max_lease`` (default 3600 s here, see below),
                          ``health_check_after``, ``max_connecting``, ``reset``,
                          ``configure``, ``maintenance_interval``
========================  ===========================================================

``max_lease`` is on by default here, unlike in pgpool itself: Django returns a connection
only when something calls ``close_old_connections`` (the request signals do; a thread, a
task or a command that never does keeps its connection for ever), and a pool cannot
afford a connection lost for good. An hour leaves any real request or job alone; set it
higher, or ``None``, for commands that hold one connection longer.

Callables (``reconnect_failed``, ``reset``, ``configure``) may be given as dotted paths,
as settings usually are. Anything wrong raises ``ImproperlyConfigured`` naming the alias
and the setting, before any connection is opened.
"""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

# psycopg_pool's names that mean the same here, and pgpool's own options.
SAME_NAMES = ("timeout", "max_waiting", "max_idle", "max_lifetime", "reconnect_timeout")
PGPOOL_NAMES = ("max_lease", "health_check_after", "max_connecting", "maintenance_interval")
CALLBACKS = ("reconnect_failed", "reset", "configure")
ACCEPTED = ("min_size", "max_size", *SAME_NAMES, *PGPOOL_NAMES, *CALLBACKS)

DEFAULT_MIN_SIZE = 4  # psycopg_pool's
DEFAULT_MAX_LEASE = 3600.0


def pool_enabled(settings_dict: dict[str, Any]) -> bool:
    """Whether this database is pooled: unless ``OPTIONS["pool"]`` is False (or None), since
    choosing this ENGINE is asking for a pool; ``{}`` means the defaults."""
    return settings_dict["OPTIONS"].get("pool", True) not in (False, None)


def pool_arguments(alias: str, settings_dict: dict[str, Any]) -> dict[str, Any]:
    """pgpool's keyword arguments (``minconn`` and ``maxconn`` included) for this database.

    Raises ImproperlyConfigured for a persistent connection (``CONN_MAX_AGE`` other than 0:
    the connection would never go back to the pool), an unknown name, or a dotted path that
    does not import. The values themselves are checked by the pool, whose ValueError or
    TypeError names the option.
    """
    if settings_dict.get("CONN_MAX_AGE", 0) != 0:
        # Django's own wording (django/db/backends/postgresql/base.py, 5.1+).
        raise ImproperlyConfigured("Pooling doesn't support persistent connections.")
    given = settings_dict["OPTIONS"].get("pool", True)
    if given is True:
        given = {}
    if not isinstance(given, dict):
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['OPTIONS']['pool'] must be True or a dict, "
            f"got {type(given).__name__}"
        )
    unknown = sorted(set(given) - set(ACCEPTED))
    if unknown:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['OPTIONS']['pool'] has unknown setting(s) "
            f"{', '.join(map(repr, unknown))}; pgpool.contrib.django accepts "
            f"{', '.join(ACCEPTED)}"
        )
    max_size = given.get("max_size")
    min_size = given.get("min_size")
    if min_size is None:
        min_size = DEFAULT_MIN_SIZE if max_size is None else min(DEFAULT_MIN_SIZE, max_size)
    arguments: dict[str, Any] = {
        "minconn": min_size,
        "maxconn": min_size if max_size is None else max_size,
        "max_lease": DEFAULT_MAX_LEASE,
    }
    if settings_dict.get("CONN_HEALTH_CHECKS"):
        arguments["health_check_after"] = 0.0  # ping every checkout, as Django would
    for name in (*SAME_NAMES, *PGPOOL_NAMES):
        if name in given:
            arguments[name] = given[name]
    for name in CALLBACKS:
        if given.get(name) is not None:
            arguments[name] = _callable(alias, name, given[name])
    return arguments


def _callable(alias: str, name: str, value: object) -> Any:
    if not isinstance(value, str):
        return value  # the pool says so if it is not callable
    try:
        return import_string(value)
    except ImportError as error:
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['OPTIONS']['pool'][{name!r}]: cannot import {value!r}: {error}"
        ) from error

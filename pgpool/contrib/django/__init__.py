"""A Django database backend that pools psycopg2 connections with pgpool.

Set-up, in ``settings.py`` (``pip install 'pgpool[django]'``)::

    DATABASES = {"default": {
        "ENGINE": "pgpool.contrib.django",  # was: "django.db.backends.postgresql"
        "NAME": "app", "USER": "app", "HOST": "db",
        "OPTIONS": {"pool": {"max_size": 10}},  # optional: True, or a dict of settings
    }}

Each request's connection then comes from a pool shared by the process's threads and
goes back to it when Django closes the connection (at the end of every request, since
``CONN_MAX_AGE`` stays 0). docs/django.md has the settings, sizing and deployment notes.

The modules: `base.py` is the backend Django loads (``DatabaseWrapper``, the hooks it
overrides and why); `options.py` reads ``OPTIONS["pool"]``; `session.py` sets up each new
physical connection as Django would; `registry.py` keeps the process's pools. This
``__init__`` imports only `registry.py`, which does not import Django: `stats()` and
`close_pools()` can be called from anywhere (a metrics endpoint, a shutdown hook).
"""

from .registry import close_pools, stats

__all__ = ["close_pools", "stats"]

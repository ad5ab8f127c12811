"""Settings of the Django project that tests and the bench run, from the environment.

tests/test_django.py sets ``PGPOOL_DJANGO_DSN`` (the suite's server), ``PGPOOL_DJANGO_DB``
and ``PGPOOL_DJANGO_OTHER_DB`` (the two aliases' databases) and, per scenario,
``PGPOOL_DJANGO_POOL`` (``OPTIONS["pool"]`` as JSON), ``PGPOOL_DJANGO_ATOMIC``,
``PGPOOL_DJANGO_CONN_MAX_AGE``, ``PGPOOL_DJANGO_ROLE`` (``OPTIONS["assume_role"]``) and
``PGPOOL_DJANGO_OPTIONS`` (more of ``OPTIONS``, as JSON).
The bench (benchmarks/django.py) also sets ``PGPOOL_DJANGO_ENGINE`` and
``PGPOOL_DJANGO_POOL_OPTIONS`` (django-db-connection-pool's ``POOL_OPTIONS``).
"""

import json
import os

from psycopg2.extensions import parse_dsn

_server = parse_dsn(os.environ["PGPOOL_DJANGO_DSN"])
_pool = json.loads(os.environ.get("PGPOOL_DJANGO_POOL", '{"max_size": 4}'))
_role = os.environ.get("PGPOOL_DJANGO_ROLE")


def _database(name: str) -> dict:
    return {
        "ENGINE": os.environ.get("PGPOOL_DJANGO_ENGINE", "pgpool.contrib.django"),
        "NAME": name,
        "USER": _server.get("user", ""),
        "PASSWORD": _server.get("password", ""),
        "HOST": _server.get("host", ""),
        "PORT": _server.get("port", ""),
        "ATOMIC_REQUESTS": os.environ.get("PGPOOL_DJANGO_ATOMIC") == "1",
        "CONN_MAX_AGE": json.loads(os.environ.get("PGPOOL_DJANGO_CONN_MAX_AGE", "0")),
        "OPTIONS": {
            "pool": _pool,
            **({"assume_role": _role} if _role else {}),
            **json.loads(os.environ.get("PGPOOL_DJANGO_OPTIONS", "{}")),
        },
        "POOL_OPTIONS": json.loads(os.environ.get("PGPOOL_DJANGO_POOL_OPTIONS", "{}")),
    }


SECRET_KEY = "only-for-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["shop"]
MIDDLEWARE: list = []
ROOT_URLCONF = "project.urls"
# With USE_TZ, Django's sessions use UTC, as the server does: a lost session time zone would
# not show. Without it, sessions take TIME_ZONE.
USE_TZ = False
TIME_ZONE = "Europe/Paris"
DATABASES = {
    "default": _database(os.environ["PGPOOL_DJANGO_DB"]),
    "other": _database(os.environ["PGPOOL_DJANGO_OTHER_DB"]),
}
DATABASE_ROUTERS = ["shop.routers.NotesOnOther"]
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "handlers": {"stderr": {"class": "logging.StreamHandler"}},
    "loggers": {"django.request": {"handlers": [], "propagate": False}},  # the 500s are wanted
}

"""The driver, psycopg2, which ships as two distributions of one package.

`psycopg2` is built from source against the system's libpq (what psycopg2 recommends for
production); `psycopg2-binary` is a wheel that bundles its own. Both install the same
`psycopg2` package, so a requirement on one would install it over the other: pgpool
requires neither (see pyproject.toml) and offers both as extras, as psycopg 3 does:
``pip install 'pgpool[binary]'`` or ``pip install 'pgpool[c]'``.

The package imports this module before any other, so that without a driver the error
says what to install instead of pointing deep inside the pool.
"""

from __future__ import annotations

try:
    import psycopg2  # noqa: F401  (imported for the error alone: the pool modules use it)
except ModuleNotFoundError as error:  # pragma: no cover - run in a venv with no psycopg2
    # (tests/test_packaging.py), where coverage does not record it
    if error.name != "psycopg2":
        raise  # psycopg2 is there but broken (one of its own modules is missing): as is
    raise ModuleNotFoundError(
        "pgpool needs the psycopg2 driver, which is not installed: "
        "pip install 'pgpool[binary]' for the prebuilt wheel (psycopg2-binary), or "
        "pip install 'pgpool[c]' to build psycopg2 from source against your libpq",
        name="psycopg2",
    ) from None

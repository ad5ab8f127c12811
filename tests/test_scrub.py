"""Passwords are scrubbed from driver errors raised while opening a connection."""

from __future__ import annotations

import traceback

import psycopg2
import pytest

import pgpool
from pgpool import connection as conn_ops


@pytest.mark.parametrize(
    ("args", "kwargs", "env", "expected"),
    [
        (("host=h password=s3cr3t",), {}, None, ["s3cr3t"]),
        (("postgresql://u:s3cr3t@h/db",), {}, None, ["s3cr3t"]),
        (("postgresql://u:s3%40cr3t@h/db",), {}, None, ["s3@cr3t"]),
        ((), {"dsn": "password=s3cr3t"}, None, ["s3cr3t"]),
        (("host=h",), {"password": "s3cr3t"}, None, ["s3cr3t"]),
        (("host=h",), {}, "s3cr3t", ["s3cr3t"]),
        (("host=h password=s3cr3t bogus",), {}, None, ["s3cr3t"]),  # unparsable: guessed
        (("host=h",), {}, None, []),
    ],
)
def test_passwords_in_finds_every_form(
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
    kwargs: dict[str, str],
    env: str | None,
    expected: list[str],
) -> None:
    monkeypatch.delenv("PGPASSWORD", raising=False)
    if env is not None:
        monkeypatch.setenv("PGPASSWORD", env)
    found = conn_ops.passwords_in(args, kwargs)
    assert set(expected) <= set(found)


def test_scrub_masks_and_keeps_the_type() -> None:
    error = psycopg2.ProgrammingError('invalid dsn: missing "=" after "s3cr3t"')
    scrubbed = conn_ops.scrub(error, ["s3cr3t"])
    assert type(scrubbed) is psycopg2.ProgrammingError
    assert "s3cr3t" not in str(scrubbed) and "********" in str(scrubbed)
    clean = psycopg2.OperationalError("connection refused")
    assert conn_ops.scrub(clean, ["s3cr3t"]) is clean


def test_a_connect_error_quoting_the_password_is_scrubbed_with_its_traceback() -> None:
    def leaky_connector(*args: object, **kwargs: object) -> object:
        raise psycopg2.OperationalError(f"libpq quoted {kwargs['password']} back at us")

    secret = "s3c" + "r3t"  # not spelled out: the traceback quotes this file's source lines
    with pytest.raises(psycopg2.OperationalError) as info:
        pgpool.ThreadedConnectionPool(1, 1, connector=leaky_connector, password=secret)
    text = "".join(traceback.format_exception(info.value))
    assert "s3cr3t" not in text
    assert "libpq quoted ******** back at us" in text

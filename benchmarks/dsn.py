"""Showing a DSN without leaking its password.

A DSN may carry a password in either of libpq's two forms: ``key=value`` pairs
(``host=db password='s3cr et'``) or a URI (``postgresql://user:s3cret@db/app?password=x``).
Nothing the benchmark prints or writes contains a password: the console and the report
only show `describe_dsn` (host, port and database), and anything else goes through
`mask_dsn`.
"""

from __future__ import annotations

import re

import psycopg2.extensions

MASK = "***"

# password = value, where value is 'single quoted with \' escapes' or a run of non-spaces.
_KV_PASSWORD = re.compile(
    r"(?P<key>\bpassword\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|[^\s']\S*|'[^']*$)",
    re.IGNORECASE,
)
_QUERY_PASSWORD = re.compile(r"(?P<key>(?:^|&)password=)[^&]*", re.IGNORECASE)
_URI_PREFIXES = ("postgresql://", "postgres://")


def mask_dsn(dsn: str) -> str:
    """The DSN with every password replaced by ``***`` (key=value or URI form)."""
    if dsn.lower().startswith(_URI_PREFIXES):
        return _mask_uri(dsn)
    return _KV_PASSWORD.sub(lambda m: m.group("key") + MASK, dsn)


def _mask_uri(uri: str) -> str:
    # By hand rather than urllib: urlunsplit would turn "postgresql:///db" into "postgresql:/db".
    scheme, _, rest = uri.partition("://")
    end = len(rest)
    for sep in "/?#":
        pos = rest.find(sep)
        if pos != -1:
            end = min(end, pos)
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hosts = authority.rpartition("@")
    if at and ":" in userinfo:
        authority = f"{userinfo.split(':', 1)[0]}:{MASK}@{hosts}"
    path, question, query = tail.partition("?")
    if question:
        query = _QUERY_PASSWORD.sub(lambda m: m.group("key") + MASK, query)
    return f"{scheme}://{authority}{path}{question}{query}"


def dsn_fields(dsn: str) -> dict[str, str]:
    """The DSN's host, port and dbname, and nothing else (empty if it cannot be parsed)."""
    try:
        parsed = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError:
        return {}
    return {key: parsed[key] for key in ("host", "port", "dbname") if parsed.get(key)}


def describe_dsn(dsn: str) -> str:
    """A one-line, password-free description: ``host=... port=... dbname=...``."""
    fields = dsn_fields(dsn)
    if not fields:
        return "(unparsable DSN, not shown)"
    return " ".join(f"{key}={value}" for key, value in fields.items())

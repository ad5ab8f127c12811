"""Every ```python block in README.md and docs/ runs, in order, against the test server.

The convention (also stated at the top of docs/index.md, for writers):

* A ```python block is executed; the blocks of one page share a namespace and run top to
  bottom, like a notebook. A block that only illustrates (it needs a server elsewhere, or
  shows a fragment) is preceded by ``<!-- skip: next -->`` (Sybil's skip directive, invisible
  on the rendered page), or is fenced as something other than ``python``.
* The docs' example DSN, ``postgresql://app@localhost/app``, is replaced by the test
  server's DSN before a block runs, so the README stays written for users. A block may also
  use the name ``dsn``, which holds the same DSN; ``PGPOOL_DSN`` points there too (for
  `pgpool.helpers.db_helper`).
* The DSN selects a schema of its own holding two tables the examples use:
  ``users (name text)`` with two rows and ``t (x int)``, empty. It is dropped afterwards.
* Pools (and DBHelpers) a page leaves open are closed after it runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg2.extensions import make_dsn
from sybil import Sybil
from sybil.parsers.markdown import PythonCodeBlockParser, SkipParser

import pgpool
from tests.conftest import PgServer

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DSN = "postgresql://app@localhost/app"
SCHEMA = "pgpool_docs"
SYBIL = Sybil(parsers=[PythonCodeBlockParser(), SkipParser()])


def _pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _runnable(path: Path) -> int:
    """How many ```python blocks a page has (a skip directive counts as a region too)."""
    return sum(1 for _, region in SYBIL.parse(path).regions if "source" in region.lexemes)


PAGES = [p for p in _pages() if _runnable(p)]


@pytest.fixture(scope="module")
def docs_dsn(pg_server: PgServer) -> Iterator[str]:
    pg_server.execute(
        f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};"
        f"CREATE TABLE {SCHEMA}.users (name text); CREATE TABLE {SCHEMA}.t (x int);"
        f"INSERT INTO {SCHEMA}.users VALUES ('ada'), ('grace')"
    )
    try:
        yield make_dsn(pg_server.dsn, options=f"-c search_path={SCHEMA}")
    finally:
        pg_server.execute(f"DROP SCHEMA {SCHEMA} CASCADE")


def _close_left_open(namespace: dict[str, Any]) -> None:
    for value in namespace.values():
        if isinstance(value, pgpool.AbstractConnectionPool) and not value.closed:
            value.closeall()
        elif isinstance(value, pgpool.DBHelper):
            value.shutdown_connection_pool()


def test_the_convention_finds_the_readme_blocks() -> None:
    # Guards the parser set-up itself: were the fence not recognised, every page would
    # silently have nothing to run.
    assert ROOT / "README.md" in PAGES
    assert _runnable(ROOT / "README.md") >= 2


@pytest.mark.parametrize("path", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(path: Path, docs_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPOOL_DSN", docs_dsn)
    document = SYBIL.parse(path)
    for _, region in document.regions:
        if isinstance(region.parsed, str):
            region.parsed = type(region.parsed)(
                region.parsed.replace(EXAMPLE_DSN, docs_dsn),
                region.parsed.offset,
                region.parsed.line_offset,
            )
    document.namespace["dsn"] = docs_dsn
    try:
        for example in document.examples():
            example.evaluate()
    finally:
        _close_left_open(document.namespace)

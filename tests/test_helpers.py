"""pgpool.helpers.DBHelper: the seed article's helper on a pgpool pool, against a real server.

The article's two usage examples are exercised as written, with one correction: its
second example binds the connection to `_` (`as (cursor, _)`) but then calls
`conn.commit()`, which only works if some unrelated `conn` happens to be in scope. The
tests use `as (cursor, conn)`; one test shows what the article's literal code does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions as ext
import psycopg2.extras
import pytest
from support import (
    Task,
    backend_count,
    drop_table,
    make_table,
    table_rows,
    unique_app_name,
    wait_backends,
    wait_until,
)

import pgpool.helpers
from pgpool.helpers import DBHelper
from testbed.embedded import run_sql


def _row(cursor: Any) -> Any:
    """The next row: a dict, since the helper's cursors are RealDictCursors."""
    return cursor.fetchone()


@pytest.fixture
def app() -> str:
    return unique_app_name("helper")


@pytest.fixture
def helper(dsn: str, app: str) -> Iterator[DBHelper]:
    h = DBHelper(dsn, application_name=app, maintenance_interval=None)
    yield h
    h.shutdown_connection_pool()


@pytest.fixture
def users(dsn: str, helper: DBHelper) -> Iterator[str]:
    """A `users` table as in the article, plus `orders`; yields the users table's name.

    The helper's pool is shut down before the tables are dropped: a pooled connection left
    in a transaction would hold a lock the DROP waits for."""
    name = make_table(dsn, "id int PRIMARY KEY, name text")
    orders = f"{name}_orders"
    run_sql(dsn, f"INSERT INTO {name} VALUES (1, 'Ada'), (2, 'Bob')")
    run_sql(dsn, f"CREATE TABLE {orders} (id int, user_id int)")
    run_sql(dsn, f"INSERT INTO {orders} VALUES (10, 1), (11, 1), (12, 2)")
    yield name
    helper.shutdown_connection_pool()
    drop_table(dsn, orders)
    drop_table(dsn, name)


def test_pool_is_created_lazily(helper: DBHelper, dsn: str, app: str) -> None:
    assert backend_count(dsn, app) == 0  # constructing the helper connects to nothing
    with helper.get_resource() as (cursor, _):
        cursor.execute("SELECT 1 AS one")
    assert backend_count(dsn, app) == 1  # minconn=1
    assert helper.pool is helper.pool  # one pool, reused


def test_get_resource_yields_a_real_dict_cursor_and_its_connection(
    helper: DBHelper, users: str
) -> None:
    with helper.get_resource() as (cursor, conn):
        assert isinstance(cursor, psycopg2.extras.RealDictCursor)
        assert isinstance(conn, ext.connection)
        assert cursor.connection is conn
        cursor.execute(f"SELECT * FROM {users} ORDER BY id")
        records = cursor.fetchall()
    assert records == [{"id": 1, "name": "Ada"}, {"id": 2, "name": "Bob"}]
    assert all(isinstance(record, dict) for record in records)
    assert [record["name"] for record in records] == ["Ada", "Bob"]
    assert cursor.closed


def test_connection_goes_back_to_the_pool(helper: DBHelper) -> None:
    with helper.get_resource() as (_, conn):
        assert helper.pool.stats().in_use == 1
    s = helper.pool.stats()
    assert (s.in_use, s.idle) == (0, 1)
    assert conn.closed == 0
    with helper.get_resource() as (_, again):
        assert again is conn


def test_connection_goes_back_after_an_exception(helper: DBHelper) -> None:
    with pytest.raises(psycopg2.errors.UndefinedTable), helper.get_resource() as (cursor, _):
        cursor.execute("SELECT * FROM no_such_table_here")
    assert cursor.closed
    assert helper.pool.stats().in_use == 0
    with helper.get_resource() as (cursor, _):
        cursor.execute("SELECT 1 AS one")
        assert _row(cursor) == {"one": 1}


def test_autocommit_by_default(helper: DBHelper, dsn: str, users: str) -> None:
    # The article's first example: no transaction management, each statement commits.
    with helper.get_resource() as (cursor, conn):
        assert conn.autocommit is True
        cursor.execute(f"UPDATE {users} SET name = 'Ann' WHERE id = 1")
        assert table_rows(dsn, users) == [(1, "Ann"), (2, "Bob")]  # visible at once


def test_transaction_example_commits(helper: DBHelper, dsn: str, users: str) -> None:
    # The article's second example, with `(cursor, conn)` instead of `(cursor, _)`.
    with helper.get_resource(autocommit=False) as (cursor, conn):
        try:
            cursor.execute(f"UPDATE {users} SET name = %s WHERE id = %s", ("new_name", 1))
            cursor.execute(f"DELETE FROM {users}_orders WHERE user_id = %s", (1,))
            assert table_rows(dsn, users) == [(1, "Ada"), (2, "Bob")]  # not yet
            conn.commit()
        except Exception:
            conn.rollback()
            raise
    assert table_rows(dsn, users) == [(1, "new_name"), (2, "Bob")]
    assert table_rows(dsn, f"{users}_orders") == [(12, 2)]


def test_transaction_example_rolls_back_on_error(helper: DBHelper, dsn: str, users: str) -> None:
    with helper.get_resource(autocommit=False) as (cursor, conn):
        try:
            cursor.execute(f"UPDATE {users} SET name = %s WHERE id = %s", ("new_name", 1))
            cursor.execute(f"DELETE FROM {users}_nope WHERE user_id = %s", (1,))
            conn.commit()
        except psycopg2.Error:
            conn.rollback()
    assert table_rows(dsn, users) == [(1, "Ada"), (2, "Bob")]
    assert helper.pool.stats().in_use == 0


ARTICLE_TRANSACTION_EXAMPLE = """
with db_helper.get_resource(autocommit=False) as (cursor, _):
    try:
        cursor.execute('update {users} set name = %s where id = %s', ('new_name', 1))
        cursor.execute('delete from {users}_orders where user_id = %s', (1,))
        conn.commit()
    except:
        conn.rollback()
"""


def test_article_transaction_example_as_written_never_commits(
    helper: DBHelper, dsn: str, users: str
) -> None:
    # As printed, `conn` is unbound: commit() raises NameError, the bare except's rollback()
    # raises it again, and the work is rolled back when the helper returns the connection.
    code = ARTICLE_TRANSACTION_EXAMPLE.format(users=users)
    with pytest.raises(NameError, match="'conn' is not defined"):
        exec(code, {"db_helper": helper})
    assert table_rows(dsn, users) == [(1, "Ada"), (2, "Bob")]
    assert table_rows(dsn, f"{users}_orders") == [(10, 1), (11, 1), (12, 2)]
    assert helper.pool.stats().in_use == 0


def test_uncommitted_work_is_rolled_back_on_return(helper: DBHelper, dsn: str, users: str) -> None:
    with helper.get_resource(autocommit=False) as (cursor, conn):
        cursor.execute(f"INSERT INTO {users} VALUES (3, 'Cy')")
        assert conn.get_transaction_status() == ext.TRANSACTION_STATUS_INTRANS
    assert table_rows(dsn, users) == [(1, "Ada"), (2, "Bob")]
    with helper.get_resource(autocommit=False) as (cursor, again):
        assert again is conn
        assert again.get_transaction_status() == ext.TRANSACTION_STATUS_IDLE
        cursor.execute(f"SELECT count(*) AS n FROM {users}")
        assert _row(cursor) == {"n": 2}


def test_autocommit_choice_does_not_leak_to_the_next_user(helper: DBHelper) -> None:
    with helper.get_resource(autocommit=False) as (_, conn):
        assert conn.autocommit is False
    with helper.get_resource() as (_, conn):
        assert conn.autocommit is True
    # The pool itself restores what the connection had when it was opened.
    conn = helper.pool.getconn()
    assert conn.autocommit is False
    helper.pool.putconn(conn)


def test_shutdown_closes_and_is_safe_to_repeat(helper: DBHelper, dsn: str, app: str) -> None:
    with helper.get_resource() as (_, conn):
        pass
    pool = helper.pool
    helper.shutdown_connection_pool()
    assert pool.closed
    assert conn.closed
    wait_backends(dsn, app, 0)
    helper.shutdown_connection_pool()  # again: no error


def test_shutdown_before_first_use_is_a_no_op(dsn: str) -> None:
    DBHelper(dsn).shutdown_connection_pool()


def test_get_resource_after_shutdown_makes_a_new_pool(helper: DBHelper) -> None:
    with helper.get_resource() as (cursor, _):
        cursor.execute("SELECT 1 AS one")
    first = helper.pool
    helper.shutdown_connection_pool()
    with helper.get_resource() as (cursor, _):
        cursor.execute("SELECT 2 AS two")
        assert _row(cursor) == {"two": 2}
    assert helper.pool is not first
    assert not helper.pool.closed


def test_one_exit_hook_however_often_the_pool_is_re_created(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each re-created pool registered another atexit hook: 53 after 50 re-creations, each
    keeping the helper alive and running at exit. One per helper is enough."""
    hooks: list[Any] = []
    monkeypatch.setattr(pgpool.helpers.atexit, "register", hooks.append)
    helper = DBHelper(dsn, minconn=0, maxconn=1, maintenance_interval=None)
    for _ in range(5):
        assert not helper.pool.closed  # made anew after each shutdown
        helper.shutdown_connection_pool()
    assert hooks == [helper.shutdown_connection_pool]


def test_pool_options_reach_the_pool(dsn: str) -> None:
    helper = DBHelper(dsn, minconn=0, maxconn=2, name="helped", maintenance_interval=None)
    try:
        pool = helper.pool
        assert (pool.minconn, pool.maxconn, pool.name) == (0, 2, "helped")
    finally:
        helper.shutdown_connection_pool()


def test_concurrent_first_use_makes_one_pool(helper: DBHelper) -> None:
    barrier = threading.Barrier(8)

    def first_use() -> Any:
        barrier.wait(10)
        return helper.pool

    tasks = [Task(first_use) for _ in range(8)]
    made = {id(task.result()) for task in tasks}
    assert len(made) == 1


def test_more_users_than_maxconn_wait_instead_of_failing(helper: DBHelper) -> None:
    # psycopg2.pool would raise "connection pool exhausted" for the fourth user.
    release = threading.Event()

    def use(n: int) -> int:
        with helper.get_resource() as (cursor, _):
            cursor.execute("SELECT %s AS n", (n,))
            row = _row(cursor)
            release.wait(10)
            return int(row["n"])

    holders = [Task(use, n) for n in range(3)]
    wait_until(lambda: helper.pool.stats().in_use == 3, "three users holding connections")
    fourth = Task(use, 3)
    wait_until(lambda: helper.pool.stats().waiting == 1, "the fourth user waiting")
    release.set()
    assert sorted(task.result() for task in [*holders, fourth]) == [0, 1, 2, 3]
    assert helper.pool.stats().in_use == 0


def test_module_level_db_helper_uses_pgpool_dsn(monkeypatch: pytest.MonkeyPatch, dsn: str) -> None:
    monkeypatch.setenv("PGPOOL_DSN", dsn)
    db_helper = pgpool.helpers.db_helper
    try:
        with db_helper.get_resource() as (cursor, _):
            cursor.execute("SELECT current_database() AS db")
            assert _row(cursor) == {"db": ext.parse_dsn(dsn)["dbname"]}
    finally:
        db_helper.shutdown_connection_pool()

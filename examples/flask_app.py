"""A Flask app with one pgpool per process: the recipe of docs/deploying.md.

Run it threaded with Flask's own server, or under gunicorn (see gunicorn.conf.py)::

    PGPOOL_DSN=postgresql://app@localhost/app flask --app examples.flask_app run --with-threads
    PGPOOL_DSN=... gunicorn -c examples/gunicorn.conf.py examples.flask_app:app

The pool is made on first use, in the process that serves requests: under a pre-fork
server that loads the app in its master (gunicorn's ``preload_app``), the master never
makes one, so it holds no connection and no pool thread, and each worker gets its own.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from flask import Flask, g, jsonify

import pgpool

app = Flask(__name__)

_pool: pgpool.ThreadedConnectionPool | None = None
_pool_lock = threading.Lock()  # two first requests at once must not make two pools


def get_pool() -> pgpool.ThreadedConnectionPool:
    """This process's pool, made on first use."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                # maxconn = the server's threads: no request waits for a connection.
                _pool = pgpool.ThreadedConnectionPool(
                    1, int(os.environ.get("POOL_MAX", "8")), os.environ["PGPOOL_DSN"], timeout=5
                )
    return _pool


def close_pool() -> None:
    """Close this process's pool, if it made one (gunicorn's worker_exit hook calls this)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.closeall()


def get_db() -> Any:
    """The request's connection: checked out on first use, returned at teardown."""
    if "db" not in g:
        g.db = get_pool().getconn()
    return g.db


@app.teardown_appcontext
def return_db(exc: BaseException | None) -> None:
    # Runs after every request, also when the view raised: the connection goes back, and
    # putconn rolls back whatever transaction the view left open.
    conn = g.pop("db", None)
    if conn is not None:
        get_pool().putconn(conn)


@app.get("/users")
def users() -> Any:
    with get_db().cursor() as cur:
        cur.execute("SELECT name FROM users ORDER BY name")
        return jsonify([name for (name,) in cur.fetchall()])


@app.post("/users/<name>")
def add_user(name: str) -> Any:
    conn = get_db()
    with conn.cursor() as cur:
        cur.execute("INSERT INTO users (name) VALUES (%s)", (name,))
    conn.commit()
    return jsonify(added=name), 201


@app.post("/users/<name>/fail")
def add_user_then_fail(name: str) -> Any:
    with get_db().cursor() as cur:
        cur.execute("INSERT INTO users (name) VALUES (%s)", (name,))
    raise RuntimeError("the view failed after writing: the write must not stay")


@app.get("/whoami")
def whoami() -> Any:
    """Which process served the request, and on which server session (for the tests)."""
    with get_db().cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        (backend,) = cur.fetchone()
    stats = get_pool().stats()
    return jsonify(pid=os.getpid(), backend=backend, in_use=stats.in_use, size=stats.size)

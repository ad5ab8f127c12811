"""gunicorn settings for examples/flask_app.py: pre-fork workers, each with its own pool.

PGPOOL_DSN=... gunicorn -c examples/gunicorn.conf.py examples.flask_app:app
"""

workers = 2
worker_class = "gthread"
threads = 8  # the pool's maxconn (POOL_MAX) matches this: no thread waits for a connection
preload_app = True  # the master imports the app once; it makes no pool (see flask_app.py)
bind = "127.0.0.1:8000"
graceful_timeout = 10


def worker_exit(server, worker):  # type: ignore[no-untyped-def]
    # In the worker, after its last request: close the pool's connections cleanly (the
    # server then logs no "unexpected EOF"). A worker that is killed cannot do this; its
    # sockets are closed by the kernel and the server ends those sessions by itself.
    from examples.flask_app import close_pool

    close_pool()

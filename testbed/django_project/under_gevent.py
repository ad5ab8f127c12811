"""The Django backend under gevent, as gunicorn's ``-k gevent`` workers run it.

``python under_gevent.py`` patches first (``monkey.patch_all()`` before anything imports
threading, then psycogreen so that libpq waits yield to the hub), then sets Django up and
runs 20 greenlets, each one request through WSGIHandler to a view that sleeps 50 ms in
the server. It prints one JSON line: the status codes, the wall time, and the pool's
stats. tests/test_django.py judges them.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402  (everything below must see the patched modules)
import os  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import psycogreen.gevent  # noqa: E402

psycogreen.gevent.patch_psycopg()

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django  # noqa: E402

django.setup()

from scenarios import pool_stats, request  # noqa: E402

GREENLETS = 20

if __name__ == "__main__":
    request("/slow/")  # warm: the pool and its first connection
    start = time.perf_counter()
    jobs = [gevent.spawn(request, "/slow/") for _ in range(GREENLETS)]
    gevent.joinall(jobs, timeout=30)
    elapsed = time.perf_counter() - start
    codes = sorted({job.value[0] if job.value else 0 for job in jobs})
    print(json.dumps({"codes": codes, "seconds": elapsed, "stats": pool_stats()}), flush=True)

"""The bench's Django load: threads making requests through Django's WSGIHandler.

``python load.py THREADS SECONDS`` (in the project's folder, with the settings'
environment) runs THREADS threads, each making the issue's request (``/hit/``: atomic() +
get_or_create + an UPDATE + a count()) in a loop for SECONDS seconds after a warm-up,
and prints one JSON line: requests, failed requests, requests per second, p50/p99
latency, connects opened (psycopg2.connect calls, whoever makes them) and the most server
sessions of the database seen meanwhile.

With ``--restart`` it prints ``READY`` after the warm-up and waits for a line on stdin
(benchmarks/django.py restarts the server meanwhile), then goes on for SECONDS; the
figures then include the restart.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import psycopg2

# Count every connect, whoever makes it: Django calls psycopg2.connect through the module,
# SQLAlchemy too, and pgpool's default connector is read when pgpool is first imported,
# which happens after this line.
_connects = [0]
_real_connect = psycopg2.connect


def _counting_connect(*args, **kwargs):  # type: ignore[no-untyped-def]
    _connects[0] += 1
    return _real_connect(*args, **kwargs)


psycopg2.connect = _counting_connect

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")

import django  # noqa: E402

django.setup()

from scenarios import request  # noqa: E402

WARMUP = 0.5


def main() -> None:
    threads, seconds = int(sys.argv[1]), float(sys.argv[2])
    restart = "--restart" in sys.argv
    from django.conf import settings

    database = settings.DATABASES["default"]["NAME"]
    admin_dsn = os.environ["PGPOOL_DJANGO_DSN"]
    measuring = threading.Event()
    done = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(threads)]
    failed = [0] * threads
    sessions = [0]

    def work(i: int) -> None:
        while not done.is_set():
            start = time.perf_counter()
            code, _ = request("/hit/", f"name=b{i % 8}")
            if measuring.is_set():
                latencies[i].append(time.perf_counter() - start)
                if code != 200:
                    failed[i] += 1

    def sample() -> None:  # the most server sessions of the database (this one excluded)
        conn = _real_connect(admin_dsn)
        conn.autocommit = True
        with conn.cursor() as cursor:
            while not done.is_set():
                try:
                    cursor.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database]
                    )
                    sessions[0] = max(sessions[0], cursor.fetchone()[0])
                except psycopg2.Error:  # the server restarts under --restart
                    return
                time.sleep(0.02)
        conn.close()

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    time.sleep(WARMUP)
    connects_before = _connects[0]
    measuring.set()
    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.perf_counter()
    if restart:  # measured from before the restart: its failures are the point
        print("READY", flush=True)
        sys.stdin.readline()
    time.sleep(seconds)
    measuring.clear()
    elapsed = time.perf_counter() - started
    connects = _connects[0] - connects_before
    done.set()
    for worker in [*workers, sampler]:
        worker.join()
    all_latencies = sorted(x for per_thread in latencies for x in per_thread)
    count = len(all_latencies)

    def percentile(p: float) -> float | None:
        return all_latencies[min(count - 1, int(p * count))] * 1e3 if count else None

    print(json.dumps({
        "requests": count, "failed": sum(failed), "rps": count / elapsed,
        "p50_ms": percentile(0.50), "p99_ms": percentile(0.99), "connects": connects,
        "connects_per_1000": connects * 1000 / count if count else None,
        "server_sessions": sessions[0],
    }), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()

"""Scenario 3, churn: the seed article's pool (1, 3) under light load from 3 threads.

Three threads each loop: check out, ``SELECT 1``, return, think for 0.2 ms. Three threads
never need more than three connections, so a pool sized (1, 3) should open three and
then reuse them forever.

psycopg2.pool does not: on return it keeps at most ``minconn`` (1) idle connection and
*closes* every other one, so the next checkout that finds the pool empty opens a brand
new connection (a few milliseconds of TCP, authentication and backend start-up) while
holding the pool's lock. Under a steady load of three threads that is a reconnect on a
large share of requests. The row "psycopg2 Threaded (3, 3)" shows the same pool with
``minconn`` raised to 3: the usual workaround, which gives up shrinking altogether.

pgpool keeps returned connections and closes the surplus only once it has been idle for
``max_idle`` (1 s here, checked every ``maintenance_interval`` = 0.25 s). After the load
stops the run keeps watching the pool for ``max_idle`` + 2 intervals: it should be back
at ``minconn`` within ``max_idle`` + one interval.

Reported: queries per second, connections opened while the load was steady (after a
short warm-up; zero is the goal), and the time to shrink back to ``minconn``.
"""

from __future__ import annotations

import time
from typing import Any

from benchmarks import contenders as cs
from benchmarks.common import (
    Context,
    Sampler,
    Table,
    fmt,
    fmt_ratio,
    fmt_sessions,
    opened,
    run_threads,
    sessions,
    sessions_note,
    spread_column,
    spread_note,
)
from benchmarks.stats import ratio, summarize

NAME = "churn"
TITLE = "Churn: the seed's pool (1, 3), 3 threads, 0.2 ms think time"
MINCONN, MAXCONN, THREADS = 1, 3, 3
THINK = 0.0002
MAX_IDLE, MAINTENANCE_INTERVAL = 1.0, 0.25
OBSERVE = MAX_IDLE + 2 * MAINTENANCE_INTERVAL  # how long the shrink is watched for
SQL = "SELECT 1"
WORKAROUND = "psycopg2-threaded-3-3"  # psycopg2 with minconn = maxconn = 3
TIMELINES = ("pgpool-threaded", "psycopg2-threaded", "psycopg_pool")


def _sizes(quick: bool) -> tuple[int, float, float]:
    """(repetitions, seconds of steady load per repetition, seconds of warm-up)."""
    return (1, 0.3, 0.1) if quick else (3, 2.0, 0.3)


def _runs() -> list[tuple[str, str, cs.Contender, int]]:
    """(row key, label, contender, minconn) for each row of the table."""
    rows = [(c.key, c.label, c, MINCONN) for c in cs.select(threaded=True, reference=False)]
    base = cs.BY_KEY[cs.BASELINE]
    rows.append((WORKAROUND, "psycopg2 (3, 3)", base, MAXCONN))
    return rows


def steps(quick: bool) -> int:
    reps, _, _ = _sizes(quick)
    return reps * len(_runs())


def _load(handle: cs.Handle, duration: float) -> int:
    """3 threads of checkout / SELECT 1 / return / think, for `duration` s; returns requests."""
    get, put, query, sleep, clock = (
        handle.get,
        handle.put,
        cs.run_query,
        time.sleep,
        time.perf_counter,
    )
    counts = [0] * THREADS
    deadline = float("inf")

    def worker(i: int) -> None:
        done = 0
        while clock() < deadline:
            conn = get()
            try:
                query(conn, SQL)
            finally:
                put(conn)
            done += 1
            sleep(THINK)
        counts[i] = done

    def release() -> None:
        nonlocal deadline
        deadline = clock() + duration

    run_threads(THREADS, worker, name="churn", on_release=release)
    return sum(counts)


def _watch_shrink(handle: cs.Handle, minconn: int) -> float | None:
    """Seconds until the pool holds `minconn` connections again (None: not within OBSERVE)."""
    assert handle.state is not None
    start = time.perf_counter()
    shrunk: float | None = None
    while (elapsed := time.perf_counter() - start) < OBSERVE:
        s = handle.state()
        size = s.idle + s.in_use + s.connecting
        if size > minconn:
            shrunk = None  # grew again (e.g. a refill): not shrunk yet
        elif shrunk is None:
            shrunk = elapsed
        time.sleep(0.005)
    return shrunk


def run(ctx: Context) -> dict[str, Any]:
    reps, duration, warmup = _sizes(ctx.quick)
    runs = _runs()
    per_rep: dict[str, list[dict[str, Any]]] = {key: [] for key, *_ in runs}
    timelines: dict[str, Any] = {}
    for rep in range(reps):
        shift = rep % len(runs)
        for key, _label, c, minconn in runs[shift:] + runs[:shift]:
            cfg = cs.PoolConfig(
                ctx.dsn,
                minconn,
                MAXCONN,
                pgpool_options={
                    "max_idle": MAX_IDLE,
                    "maintenance_interval": MAINTENANCE_INTERVAL,
                },
                psycopg_pool_options={"max_idle": MAX_IDLE},
                psycopg2_pool_options={"idle_timeout": MAX_IDLE},
            )
            with opened(c, cfg) as handle:
                sampler = Sampler(handle).start() if handle.state is not None else None
                _load(handle, warmup)
                before = handle.opened.value
                if sampler:
                    sampler.mark("steady load")
                requests = _load(handle, duration)
                reconnects = handle.opened.value - before
                size_after = None
                shrink_s = None
                watched = False
                if sampler:
                    sampler.mark("load stops")
                    s = handle.state()  # type: ignore[misc]
                    size_after = s.idle + s.in_use + s.connecting
                    # Watching the shrink takes OBSERVE seconds: once per pool is enough,
                    # and in a quick run only for pgpool, whose goal it is.
                    if rep == 0 and (not ctx.quick or key == "pgpool-threaded"):
                        watched = True
                        shrink_s = _watch_shrink(handle, minconn)
                    timeline = sampler.stop()
                    if rep == 0 and key in TIMELINES:
                        timelines[key] = timeline
                per_rep[key].append(
                    {
                        "qps": requests / duration,
                        "requests": requests,
                        "reconnects": reconnects,
                        "opened_total": handle.opened.value,
                        "sessions": handle.opened.peak,
                        "size_at_stop": size_after,
                        "shrink_s": shrink_s,
                        "watched": watched,
                    }
                )
            ctx.advance(f"churn / {key}")
    return {
        "title": TITLE,
        "settings": {
            "minconn": MINCONN,
            "maxconn": MAXCONN,
            "threads": THREADS,
            "think_ms": THINK * 1e3,
            "max_idle": MAX_IDLE,
            "maintenance_interval": MAINTENANCE_INTERVAL,
            "observe_s": OBSERVE,
            "repetitions": reps,
            "seconds": duration,
            "warmup_s": warmup,
        },
        "labels": {key: label for key, label, *_ in runs},
        "rows": _analyse(per_rep),
        "timelines": timelines,
    }


def _analyse(per_rep: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    rows: dict[str, Any] = {}
    for key, reps in per_rep.items():
        shrink = [r["shrink_s"] for r in reps if r["shrink_s"] is not None]
        rows[key] = {
            "qps": summarize(r["qps"] for r in reps).to_dict(),
            "reconnects": summarize(r["reconnects"] for r in reps).to_dict(),
            "reconnects_per_1k": summarize(
                r["reconnects"] / max(1, r["requests"]) * 1000 for r in reps
            ).to_dict(),
            "opened_total": max(r["opened_total"] for r in reps),
            "size_at_stop": max(
                (r["size_at_stop"] for r in reps if r["size_at_stop"] is not None), default=None
            ),
            "shrink_s": min(shrink) if shrink else None,
            "shrink_watched": any(r["watched"] for r in reps),
            "sessions": sessions([r["sessions"] for r in reps], MAXCONN),
            "per_rep": reps,
        }
    base = rows.get(cs.BASELINE)
    for row in rows.values():
        row["qps_vs_baseline"] = (
            ratio(row["qps"]["median"], base["qps"]["median"]) if base else None
        )
    return rows


def tables(result: dict[str, Any]) -> list[Table]:
    st = result["settings"]
    cols = ["contender", "sessions", "queries/s", "vs psycopg2", "connects/1k", "size"]
    cols.append("back to min")
    rows = result["rows"]
    qps = spread_column(rows, "qps", 0)
    table_rows = []
    for key, row in rows.items():
        shrink = row["shrink_s"]
        if shrink is not None:
            shrink_cell = f"{shrink:.2f} s"
        elif row["shrink_watched"]:
            shrink_cell = f"not in {st['observe_s']:g} s"
        else:
            shrink_cell = "-"
        table_rows.append(
            [
                result["labels"][key],
                fmt_sessions(row.get("sessions")),
                qps[key],
                fmt_ratio(row["qps_vs_baseline"]),
                fmt(row["reconnects_per_1k"]["median"], 0),
                "-" if row["size_at_stop"] is None else str(row["size_at_stop"]),
                shrink_cell,
            ]
        )
    notes = [
        f"pool (min {st['minconn']}, max {st['maxconn']}), {st['threads']} threads, "
        f"{st['think_ms']:g} ms think time, {st['warmup_s']:g} s warm-up; "
        + spread_note(st["repetitions"], f"repetitions of {st['seconds']:g} s"),
        "vs psycopg2: ratio of the q/s medians; connects/1k: connections opened per 1000 "
        "requests of steady load (median); size: connections when the load stops",
        f"max_idle = {st['max_idle']:g} s for pgpool and psycopg_pool, idle_timeout = "
        f"{st['max_idle']:g} s for psycopg2-pool (it reaps only inside putconn); pgpool's "
        f"maintenance every {st['maintenance_interval']:g} s; the shrink is watched for "
        f"{st['observe_s']:g} s",
        "DBUtils keeps every connection (maxcached unlimited by default); SQLAlchemy closes "
        "overflow connections on return, like psycopg2",
        sessions_note(st["maxconn"], rows),
    ]
    return [Table(f"churn: {TITLE.split(': ', 1)[1]}", cols, table_rows, notes)]

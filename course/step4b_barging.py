"""Step 4b: barging, with a limit. Why pgpool serves strictly first come, first served.

Step 4 hands every returned connection to the oldest waiter. That is fair, and it costs a
wake-up per checkout: the waiter was asleep, and on a machine with two CPUs it usually
wakes on the other one. A *barging* pool lets the thread that returns a connection take it
straight back if it asks again at once, and wakes a waiter only to compete for it: fewer
wake-ups, more queries per second, and a waiter that can lose every race.

`BargingPool` barges until the oldest waiter has waited `patience` seconds, then hands
connections over in order until the queue is served (Go's `sync.Mutex` does the same,
with 1 ms, and calls it starvation mode). ``patience=0`` is step 4; ``patience=math.inf``
never stops barging. ``python -m course.step4b_barging`` measures the curve.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import psycopg2

from . import step4_fifo
from ._common import PoolClosed, PoolMisuse, PoolTimeout


class Waiter(step4_fifo.Waiter):
    """A queued caller, who knows since when it waits. Rung with `conn` set: served; rung
    with neither `conn` nor `error`: woken to compete for an idle connection."""

    def __init__(self, since: float) -> None:
        super().__init__()
        self.since = since


class BargingPool(step4_fifo.FifoPool):
    def __init__(
        self, minconn: int, maxconn: int, *args: Any, patience: float = 0.001, **kwargs: Any
    ) -> None:
        self.patience = patience
        self._awake = 0  # waiters woken to compete, not yet back at the lock
        super().__init__(minconn, maxconn, *args, **kwargs)

    def _starving(self, now: float) -> bool:
        """The oldest waiter has waited `patience`: no more barging (lock held)."""
        return bool(self._waiters) and now - self._waiters[0].since >= self.patience

    def _wake_one(self) -> None:
        """Wake the oldest waiter to compete for an idle connection, unless one already is
        on its way (lock held): a wake-up per return would wake the whole queue."""
        if self._idle and self._waiters and not self._awake:
            self._awake += 1
            self._waiters.popleft().ring()

    def getconn(self, timeout: float | None = None) -> Any:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        since, woken = time.monotonic(), False
        while True:
            with self._lock:
                if woken:
                    self._awake -= 1
                if self.closed:
                    raise PoolClosed("pool is closed")
                now = time.monotonic()
                oldest = woken and (not self._waiters or since <= self._waiters[0].since)
                if self._idle and (oldest or not self._starving(now)):
                    conn = self._idle.pop()  # barging, unless we are the oldest waiter
                    self._used.add(id(conn))
                    return conn
                if self._idle:  # an older waiter starves: it goes first
                    head = self._waiters.popleft()
                    head.conn = self._idle.pop()
                    self._used.add(id(head.conn))
                    head.ring()
                if self._size < self.maxconn:
                    conn = psycopg2.connect(*self._args, **self._kwargs)  # as in step 4
                    self._size += 1
                    self._used.add(id(conn))
                    return conn
                waiter = Waiter(since)
                if woken:  # lost the race: back to the head of the queue, keeping its age
                    self._waiters.appendleft(waiter)
                else:
                    self._waiters.append(waiter)
            if not waiter.bell.acquire(timeout=max(0.0, deadline - time.monotonic())):
                with self._lock:  # timed out, unless rung just now
                    if waiter.conn is None and waiter.error is None:
                        if waiter in self._waiters:
                            self._waiters.remove(waiter)
                        else:  # woken to compete, and giving up: wake the next one
                            self._awake -= 1
                            self._wake_one()
                        raise PoolTimeout("no connection came back in time")
            if waiter.error is not None:
                raise waiter.error
            if waiter.conn is not None:  # handed over in starvation mode
                return waiter.conn
            woken = True

    def putconn(self, conn: Any) -> None:
        with self._lock:
            if id(conn) not in self._used:
                raise PoolMisuse("connection is not checked out from this pool")
            if self.closed:
                self._used.remove(id(conn))
                self._size -= 1
            elif self._starving(time.monotonic()):  # hand it over, first come first served
                waiter = self._waiters.popleft()
                waiter.conn = conn
                waiter.ring()
                return
            else:  # idle: whoever asks first takes it, and the oldest waiter may compete
                self._used.remove(id(conn))
                self._idle.append(conn)
                self._wake_one()
                return
        conn.close()


# -- the measurement -------------------------------------------------------------------------

PATIENCES = (0.0, 0.0001, 0.0005, 0.001, 0.002, 0.005, 0.02, math.inf)


THREADS, CONNS = 16, 4


def measure(dsn: str, reps: int = 3, seconds: float = 1.0) -> dict[str, Any]:
    """Each patience, psycopg2's retry loop and pgpool, `reps` runs of `seconds` each, the
    rows taking turns; the medians, and the load average around the runs."""
    import functools
    import os
    import statistics

    import pgpool

    from .measure import Psycopg2Retry, contention_numbers

    pools: list[tuple[str, float | None, Any]] = [
        (f"barging, patience {p * 1000:g} ms", p, functools.partial(BargingPool, patience=p))
        for p in PATIENCES
    ]
    pools += [
        ("psycopg2 + retry loop", None, Psycopg2Retry),
        ("pgpool", None, pgpool.ThreadedConnectionPool),
    ]
    load_before = os.getloadavg()[0]
    runs: dict[str, list[tuple[float, float, float, int, int]]] = {p[0]: [] for p in pools}
    for _ in range(reps):
        for label, _patience, pool in pools:
            runs[label].append(contention_numbers(pool, dsn, THREADS, CONNS, seconds))
    rows = []
    for label, patience, _pool in pools:
        rows.append(
            {
                "label": label,
                "patience_ms": None if patience is None else patience * 1000,
                "qps": statistics.median(r[0] for r in runs[label]),
                "worst_ms": statistics.median(r[2] for r in runs[label]) * 1000,
                # fewest queries of one thread / most: 1 even, 0 a thread made none
                "fairness": statistics.median(r[3] / r[4] for r in runs[label]),
            }
        )
    settings = {"threads": THREADS, "conns": CONNS, "reps": reps, "seconds": seconds}
    load = {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)}
    return {"settings": settings, "cpus": os.cpu_count(), "loadavg": load, "rows": rows}


def table(results: dict[str, Any]) -> str:
    """The measurement as the chapter shows it."""
    s = results["settings"]
    lines = [
        f"{s['threads']} threads on {s['conns']} connections, SELECT 1, {s['seconds']:g} s per"
        f" run; median of {s['reps']} runs, the rows taking turns",
        f"{'':28} {'q/s':>7} {'worst wait':>11} {'fairness':>9}",
    ]
    for row in results["rows"]:
        lines.append(
            f"{row['label']:28} {row['qps']:7,.0f} {row['worst_ms']:8.1f} ms {row['fairness']:9.2f}"
        )
    return "\n".join(lines)


def plot(results: dict[str, Any], path: str) -> None:
    """The curve: q/s, worst wait and fairness against patience, with psycopg2's retry loop
    and pgpool as lines across (they have no patience). Needs matplotlib (bench extra)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = [r for r in results["rows"] if r["patience_ms"] is not None]
    others = [r for r in results["rows"] if r["patience_ms"] is None]
    finite = [r for r in curve if math.isfinite(r["patience_ms"])]
    xs = [max(r["patience_ms"], 0.01) for r in finite]  # 0 drawn at 0.01 ms on a log axis
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    panels = (("qps", "queries/s"), ("worst_ms", "worst wait (ms, log)"), ("fairness", "fairness"))
    for ax, (key, title) in zip(axes, panels, strict=True):
        ax.plot(xs, [r[key] for r in finite], marker="o", color="tab:blue", label="barging")
        for row, style in zip(others, ("--", ":"), strict=True):
            ax.axhline(row[key], linestyle=style, color="tab:gray", label=row["label"])
        never = next(r for r in curve if not math.isfinite(r["patience_ms"]))
        ax.axhline(never[key], linestyle="-.", color="tab:red", label="never stops barging")
        ax.set_xscale("log")
        ax.set_xlabel("patience (ms; 0 drawn at 0.01)")
        ax.set_title(title)
        if key == "worst_ms":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    import argparse
    import json

    from ._common import server

    cli = argparse.ArgumentParser(prog="python -m course.step4b_barging")
    cli.add_argument("--out", metavar="DIR", help="also write results.json and curve.png")
    args = cli.parse_args()
    with server() as dsn:
        results = measure(dsn)
    print(table(results))
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
        plot(results, str(out / "curve.png"))
        print(f"wrote {out / 'results.json'} and {out / 'curve.png'}")


if __name__ == "__main__":
    main()

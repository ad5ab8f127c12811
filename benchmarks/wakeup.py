"""What waking a sleeping thread costs, on one CPU and across two: the physical limit of a
pool that serves waiters in order.

A pool that hands a returned connection to the oldest waiter must wake that waiter: with
16 threads on 4 connections nearly every checkout is such a hand-off. Two threads that
hand a turn back and forth (a ping-pong through two locks, each thread sleeping in
`acquire` until the other releases) measure one wake-up with nothing else in it. The
contention scenario reports it beside its own figures, and its goals name it (goals.py).

Linux only (`os.sched_setaffinity` pins each thread to its CPU); elsewhere, or with fewer
than two CPUs allowed, the cross-CPU figure is None.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from benchmarks.stats import summarize


def _pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # 0: the calling thread


def round_trip_us(cpus: tuple[int, int] | None, n: int) -> float:
    """Microseconds per round trip (two wake-ups) of two threads, each pinned to its CPU
    of `cpus` (None: wherever the scheduler puts them)."""
    ping, pong = threading.Lock(), threading.Lock()
    ping.acquire()
    pong.acquire()

    def other() -> None:
        _pin(None if cpus is None else cpus[1])
        for _ in range(n):
            ping.acquire()  # sleeps until the main thread releases it
            pong.release()

    before = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    thread = threading.Thread(target=other, daemon=True)
    try:
        _pin(None if cpus is None else cpus[0])
        thread.start()
        start = time.perf_counter()
        for _ in range(n):
            ping.release()
            pong.acquire()
        elapsed = time.perf_counter() - start
    finally:
        thread.join()
        if before is not None and cpus is not None:
            os.sched_setaffinity(0, before)
    return elapsed / n * 1e6


def measure(quick: bool) -> dict[str, Any]:
    """One wake-up (half a round trip), in microseconds: both threads on one CPU, and on two
    different CPUs; medians of several runs of many round trips."""
    n, runs = (2_000, 3) if quick else (20_000, 5)
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    out: dict[str, Any] = {"round_trips": n, "runs": runs, "same_cpu_us": None}
    out["cross_cpu_us"] = None
    if not allowed:
        return out
    same = summarize(round_trip_us((allowed[0], allowed[0]), n) / 2 for _ in range(runs))
    out["same_cpu_us"] = same.to_dict()
    if len(allowed) >= 2:
        cross = summarize(round_trip_us((allowed[0], allowed[1]), n) / 2 for _ in range(runs))
        out["cross_cpu_us"] = cross.to_dict()
    return out


def note(wakeup: dict[str, Any] | None) -> str | None:
    """The line a table prints about it, or None if it was not measured."""
    if not wakeup or wakeup.get("same_cpu_us") is None:
        return None
    same = wakeup["same_cpu_us"]["median"]
    text = f"one thread waking another (a ping-pong of two threads): {same:.1f} us on one CPU"
    if wakeup.get("cross_cpu_us") is not None:
        text += f", {wakeup['cross_cpu_us']['median']:.1f} us across two CPUs"
    return text + f" (median of {wakeup['runs']} runs of {wakeup['round_trips']:,} round trips)"

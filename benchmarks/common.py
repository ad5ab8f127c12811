"""What every scenario shares: its run context, result tables, threads and timelines."""

from __future__ import annotations

import contextlib
import gc
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from benchmarks.contenders import Contender, Handle, PoolConfig
from benchmarks.stats import Summary


@dataclass
class Context:
    """Where and how big to run; `advance` moves the progress bar one step.

    `server_pid` is the postmaster's pid when the server runs on this machine under our
    control (the embedded one), else None.
    """

    dsn: str
    quick: bool = False
    advance: Callable[[str], None] = lambda description: None
    server_pid: int | None = None


@contextmanager
def same_cpu(ctx: Context) -> Iterator[str]:
    """Run this thread and the server's *new* backends on one CPU; yield how it went.

    On small virtual machines a round trip between two processes costs several times more
    when they sit on different CPUs (the sleeping CPU must be woken up) than on the same
    one, and the scheduler moves processes between the two from one second to the next.
    A single-thread latency benchmark then measures where the scheduler happened to put
    each connection's backend, not the pool. Pinning the client thread and the
    postmaster (whose children, the backends, inherit the setting) to one CPU gives every
    contender the same placement. Only possible with the embedded server; restored after.
    """
    if ctx.server_pid is None or not hasattr(os, "sched_setaffinity"):
        yield "not controlled (server not started by this run)"
        return
    client_cpus = os.sched_getaffinity(0)
    server_cpus = os.sched_getaffinity(ctx.server_pid)
    cpu = min(client_cpus & server_cpus or client_cpus)
    try:
        os.sched_setaffinity(ctx.server_pid, {cpu})
        os.sched_setaffinity(0, {cpu})
        status = f"client thread and new server backends pinned to CPU {cpu}"
    except OSError as exc:
        status = f"not controlled ({exc.strerror})"
    try:
        yield status
    finally:
        os.sched_setaffinity(0, client_cpus)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(ctx.server_pid, server_cpus)


@dataclass
class Table:
    """One result table, rendered both on the console (rich) and in the Markdown report."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


@contextmanager
def opened(contender: Contender, cfg: PoolConfig) -> Iterator[Handle]:
    """Build a contender's pool, and always close it (no connection outlives a scenario)."""
    handle = contender.build(cfg)
    try:
        yield handle
    finally:
        handle.close()


@contextmanager
def no_gc() -> Iterator[None]:
    """Keep the cyclic garbage collector out of a timed section (collect before it)."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def run_threads(
    n: int,
    target: Callable[[int], None],
    *,
    name: str = "bench",
    on_release: Callable[[], None] | None = None,
) -> float:
    """Run `target(i)` on `n` threads released together; return the wall time in seconds.

    The threads wait on a barrier so that none starts early; `on_release` runs the moment
    they are all there (e.g. to set a deadline), then the clock starts and it stops when
    the last thread finishes.
    """
    barrier = threading.Barrier(n + 1, action=on_release)
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            target(i)
        except BaseException as exc:  # reported to the caller, not lost in a thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), name=f"{name}-{i}") for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


class Sampler:
    """Samples a pool's state from a background thread every `interval` seconds.

    Each sample is (t, idle, in_use, waiting, connecting, opened): `t` in seconds since
    `start()`, `opened` the connections opened since the sampler was created. `mark(label)` records
    an event (e.g. "load stops") on the same time axis.
    """

    def __init__(self, handle: Handle, interval: float = 0.005) -> None:
        if handle.state is None:
            raise ValueError("this contender exposes no state to sample")
        self._state = handle.state
        self._opened = handle.opened
        self._base = handle.opened.value
        self.interval = interval
        self.samples: list[tuple[float, int, int, int, int, int]] = []
        self.marks: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._t0 = 0.0

    def start(self) -> Sampler:
        self._t0 = time.perf_counter()
        self._thread.start()
        return self

    def now(self) -> float:
        return time.perf_counter() - self._t0

    def mark(self, label: str) -> None:
        self.marks.append((self.now(), label))

    def _sample(self) -> None:
        s = self._state()
        opened = self._opened.value - self._base
        self.samples.append((self.now(), s.idle, s.in_use, s.waiting, s.connecting, opened))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        self._sample()  # so there is always at least one sample
        cols = list(zip(*self.samples, strict=True))
        return {
            "interval": self.interval,
            "t": [round(x, 5) for x in cols[0]],
            "idle": list(cols[1]),
            "in_use": list(cols[2]),
            "waiting": list(cols[3]),
            "connecting": list(cols[4]),
            "opened": list(cols[5]),
            "marks": [{"t": round(t, 5), "label": label} for t, label in self.marks],
        }


def fmt(value: float | None, digits: int = 1, unit: str = "") -> str:
    """A number for a table cell; '-' when missing."""
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{unit}"


def fmt_ratio(value: float | None) -> str:
    """``1.29x``; below 0.1 two significant figures (``0.0048x``), never a bare ``0.00x``."""
    if value is None:
        return "-"
    if 0 < abs(value) < 0.1:
        return f"{value:.2g}x"
    return f"{value:.2f}x"


# -- honest cells: a median with its spread, marked when it cannot be trusted ----------

ONCE = "(n=1)"  # suffix of a cell measured only once: it has no spread to show
NOISY = "~"  # suffix of a cell whose spread exceeds its gap to the nearest other median


def noisy(summaries: Mapping[str, Summary]) -> set[str]:
    """Keys whose spread (half the interquartile range, the "±" shown) is larger than the
    distance from their median to the nearest other median: their rank is not established.
    A cell measured once is not in this set: it is marked `ONCE` instead."""
    out = set()
    for key, s in summaries.items():
        if s.n < 2:
            continue
        gaps = [abs(s.median - o.median) for k, o in summaries.items() if k != key]
        if gaps and (s.p75 - s.p25) / 2 > min(gaps):
            out.add(key)
    return out


def fmt_spread(s: Summary, digits: int = 1, scale: float = 1.0, is_noisy: bool = False) -> str:
    """``median ±half-IQR``: the middle value and how much repetitions moved around it.

    Never ``±0`` for want of data: a single measurement is shown as ``median (n=1)``,
    repetitions that all agree as ``median ±0 (n=3)``, and a spread too small for `digits`
    keeps two significant figures. `is_noisy` appends `NOISY`.
    """
    median = s.median * scale
    if s.n < 2:
        return f"{median:,.{digits}f} {ONCE}"
    half = (s.p75 - s.p25) / 2 * scale
    if half == 0:  # every repetition gave the same value: say how many, not a bare ±0
        return f"{median:,.{digits}f} ±0 (n={s.n})"
    spread = f"{half:,.{digits}f}"
    if half > 0 and float(spread.replace(",", "")) == 0:
        spread = f"{half:.2g}"
    return f"{median:,.{digits}f} ±{spread}{NOISY if is_noisy else ''}"


def spread_column(
    rows: Mapping[str, Mapping[str, Any]], metric: str, digits: int = 1, scale: float = 1.0
) -> dict[str, str]:
    """One table column: each row's `metric` (a Summary dict) as `fmt_spread`, the cells
    whose order against their nearest neighbour is not established marked `NOISY`."""
    summaries = {key: Summary.from_dict(row[metric]) for key, row in rows.items()}
    shaky = noisy(summaries)
    return {key: fmt_spread(s, digits, scale, key in shaky) for key, s in summaries.items()}


def spread_note(repetitions: int, what: str = "repetitions") -> str:
    """The legend of `fmt_spread` cells, with the number of repetitions behind them."""
    if repetitions < 2:
        return f"measured once {ONCE}: no spread, so no order between close values is established"
    return (
        f"median of {repetitions} {what} ± half the interquartile range; "
        f"{NOISY} = the spread exceeds the gap to the nearest other median (order not established)"
    )


# -- sessions: connections open at once, against the configured maximum ----------------


def sessions(counts: Sequence[int], maxconn: int) -> dict[str, Any]:
    """Peak sessions over repetitions, and whether they exceeded the configured maximum."""
    peak = max(counts) if counts else 0
    return {"peak": peak, "maxconn": maxconn, "over": peak > maxconn}


def fmt_sessions(info: Mapping[str, Any] | None) -> str:
    if info is None:
        return "-"
    if info["over"]:
        return f"{info['peak']} (>{info['maxconn']})"
    return str(info["peak"])


def over_maxconn(rows: Mapping[str, Mapping[str, Any]]) -> set[str]:
    """Keys of the rows whose contender opened more sessions than the configured maximum."""
    return {key for key, row in rows.items() if row.get("sessions", {}).get("over")}


def sessions_note(maxconn: int, rows: Mapping[str, Mapping[str, Any]]) -> str:
    over = over_maxconn(rows)
    text = f"sessions: most connections open at once (configured maximum {maxconn})"
    if over:
        text += (
            f"; (>{maxconn}) = exceeded it: faster for it, so never the best other pool "
            "a goal is judged against"
        )
    return text

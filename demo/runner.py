"""The demo's loop: start the pools and their threads, sample, draw, inject the fault.

Every `TICK` seconds the runner takes a snapshot of each pool (through `demo.adapter`), adds
it to the lanes' history and redraws: a rich `Live` display on a terminal, or, when the
output is piped, a plain status line per pool each second plus the events as they happen.
Both end with the final frame, which ``--record`` also saves as an SVG.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from psycopg2.extensions import make_dsn
from rich.console import Console
from rich.live import Live

from demo.scenarios import SCENARIOS, Scenario
from demo.view import LEAKED, Frame, PoolView, render, status_line
from demo.workload import EventLog, Workload
from testbed.embedded import EmbeddedPostgres, run_sql

TICK = 0.2  # seconds between samples: one character of a lane per tick
PLAIN_EVERY = 1.0  # seconds between status lines when piped
REPEAT_QUIET = 2.0  # seconds during which a repeated pgpool log message is not shown again
OPENED_EVERY = 2.0  # connects are logged as one line per pool per this many seconds
SHORT_DURATION = 2.0  # --short: every scenario scaled to about this long
APPLICATION_NAME = "pgpool-demo"
RECORD_WIDTH = 100

# pgpool's counters worth a line in the event log when they move, and how to say it.
NEWS = {
    "connections_closed": "closed {} connection(s)",
    "idle_reaped": "reaped {} idle connection(s) (max_idle)",
    "leases_reclaimed": "reclaimed {} leaked connection(s) (max_lease)",
    "timeouts": "{} getconn call(s) timed out",
    "failed_checks": "{} connection(s) failed the health check",
}


class _ToEventLog(logging.Handler):
    """pgpool's log records (reclaims, failed connects) as events, first line only. While
    the server is down every connect attempt logs the same failure: a message already
    shown in the last REPEAT_QUIET seconds is not shown again."""

    def __init__(self, log: EventLog) -> None:
        super().__init__(logging.INFO)
        self._log = log
        self._shown: dict[str, float] = {}  # message -> when last shown

    def emit(self, record: logging.LogRecord) -> None:
        line = record.getMessage().splitlines()[0]
        now = time.monotonic()
        if now - self._shown.get(line, -REPEAT_QUIET) < REPEAT_QUIET:
            return
        self._shown[line] = now
        self._log.add("pgpool log", line if len(line) <= 90 else line[:89] + "…")


class Fault(threading.Thread):
    """Runs the scenario's fault on its own thread, so the display goes on meanwhile."""

    def __init__(
        self,
        scenario: Scenario,
        workloads: Sequence[Workload],
        server: EmbeddedPostgres | None,
        dsn: str,
        log: EventLog,
    ) -> None:
        super().__init__(name="demo-fault", daemon=True)
        self.kind = scenario.fault
        self.downtime = scenario.downtime
        self.workloads = workloads
        self.server = server
        self.dsn = dsn
        self.log = log

    def run(self) -> None:
        if self.kind == "leak":
            for w in self.workloads:
                w.leak_one()
            return
        start = time.monotonic()
        if self.server is not None:
            self.log.add("server", "stopping (pg_ctl stop -m fast)")
            self.server.stop("fast")
            self.log.add("server", f"down; starting again in {self.downtime:.1f} s")
            time.sleep(self.downtime)
            self.server.start()
            self.log.add("server", f"back, {time.monotonic() - start:.1f} s after the stop")
        else:  # a server we do not own: kill our sessions instead
            self.log.add("server", "not ours to restart: terminating the demo's sessions")
            run_sql(
                self.dsn,
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE application_name = %s",
                (APPLICATION_NAME,),
            )


def run(
    scenario_name: str,
    pools: Sequence[str],
    dsn: str,
    console: Console,
    *,
    server: EmbeddedPostgres | None = None,
    short: bool = False,
    record: Path | None = None,
) -> int:
    """Run one scenario on `pools` (pool names, see `demo.workload.build`); return 0."""
    scenario: Scenario = SCENARIOS[scenario_name]
    if short:
        scenario = scenario.scaled(SHORT_DURATION / scenario.duration)
    dsn = make_dsn(dsn, application_name=APPLICATION_NAME)
    t0 = time.monotonic()

    def clock() -> float:
        return time.monotonic() - t0

    log = EventLog(clock)
    pgpool_logger = logging.getLogger("pgpool")
    handler = _ToEventLog(log)
    saved_level, saved_propagate = pgpool_logger.level, pgpool_logger.propagate
    pgpool_logger.addHandler(handler)
    pgpool_logger.setLevel(logging.INFO)
    pgpool_logger.propagate = False  # the event log shows them; stderr would tear the display
    workloads: list[Workload] = []
    longest: dict[str, float] = {}
    try:
        for kind in pools:
            workloads.append(Workload(kind, scenario, dsn, log, clock))
        views = [PoolView(w.name, scenario.maxconn) for w in workloads]
        frame = _loop(scenario, workloads, views, log, clock, console, server, dsn)
        longest = {w.name: w.longest_wait() for w in workloads}
    finally:
        for w in workloads:
            w.stop()
        pgpool_logger.removeHandler(handler)
        pgpool_logger.setLevel(saved_level)
        pgpool_logger.propagate = saved_propagate
    if not console.is_terminal:
        console.print(render(frame, console.width))
    for w in workloads:
        summary = (
            f"{w.name}: {w.queries:,} queries, {w.errors:,} errors, "
            f"{w.opened.value} connects, longest wait {longest[w.name] * 1000:,.0f} ms"
        )
        console.print(summary, markup=False, highlight=False)
    if record is not None:
        # A console of its own, wide enough for two panels side by side, printing nowhere.
        recorder = Console(record=True, width=RECORD_WIDTH, file=io.StringIO())
        recorder.print(render(frame, RECORD_WIDTH))
        svg = recorder.export_svg(title=f"python -m demo {scenario_name}")
        record.write_text(offline_svg(svg), encoding="utf-8")
        console.print(f"saved the final frame to {record}")
    return 0


# Fonts every system has one of; the browser takes the first it finds. DejaVu Sans Mono
# (Debian's default) and Menlo/Consolas draw the box-drawing characters the panels use.
MONOSPACE = '"DejaVu Sans Mono", "Liberation Mono", Menlo, Consolas, monospace'
WEB_FONT = re.compile(r"\s*@font-face \{[^}]*\}")


def offline_svg(svg: str) -> str:
    """A recorded frame that needs no network: Rich's SVG loads Fira Code from a CDN, and
    without it the fallback font's widths put the panels' borders out of line. Here the
    font is the system's monospace, and each run of text is stretched to the width Rich
    computed for it (``lengthAdjust``), so any monospace font keeps the columns aligned."""
    svg = WEB_FONT.sub("", svg)
    svg = svg.replace("font-family: Fira Code, monospace;", f"font-family: {MONOSPACE};")
    return svg.replace(' textLength="', ' lengthAdjust="spacingAndGlyphs" textLength="')


def _loop(
    scenario: Scenario,
    workloads: list[Workload],
    views: list[PoolView],
    log: EventLog,
    clock: Callable[[], float],
    console: Console,
    server: EmbeddedPostgres | None,
    dsn: str,
) -> Frame:
    phases = list(scenario.phases)
    phase = ""
    fault: Fault | None = None
    news = [_News() for _ in workloads]
    seen_events = 0
    next_plain = 0.0
    live = Live(console=console, auto_refresh=False) if console.is_terminal else None
    for w in workloads:
        w.start()
    if live is not None:
        live.start()
    try:
        while True:
            now = clock()
            while phases and phases[0].at <= now:
                p = phases.pop(0)
                phase = p.label
                for w in workloads:
                    w.active = p.threads
                log.add("scenario", p.label)
            if scenario.fault and fault is None and now >= scenario.fault_at:
                fault = Fault(scenario, workloads, server, dsn, log)
                fault.start()
            for i, (w, view) in enumerate(zip(workloads, views, strict=True)):
                _sample(w, view)
                for line in news[i].lines(view, now):
                    log.add(w.name, line)
            frame = Frame(scenario, now, phase, views, log.last(20))
            if live is not None:
                live.update(render(frame, console.width), refresh=True)
            else:
                seen_events, new = log.since(seen_events)
                for t, who, message in new:
                    line = f"{t:5.1f}s {who:<10.10} {message}"
                    console.print(line, markup=False, highlight=False)
                if now >= next_plain:
                    next_plain += PLAIN_EVERY
                    for view in views:
                        console.print(status_line(view, now), markup=False, highlight=False)
            fault_running = fault is not None and fault.is_alive()
            if now >= scenario.duration and not fault_running:
                return frame
            time.sleep(TICK)
    finally:
        if live is not None:
            live.stop()


class _News:
    """Turns one pool's counters into event lines: each of pgpool's NEWS counters that
    moved, and connects, which psycopg2.pool may make on every request, as at most one line
    per OPENED_EVERY seconds (with the span of time they happened in)."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = {}
        self.opened = 0  # connects already told
        self.told_at = -OPENED_EVERY
        self.seen = 0  # connects at the last sample
        self.first: float | None = None  # first sample with connects not yet told
        self.last = 0.0  # last sample where the count moved

    def lines(self, view: PoolView, now: float) -> list[str]:
        out = []
        for key, template in NEWS.items():
            moved = view.counters.get(key, 0) - self.counters.get(key, 0)
            if moved > 0:
                out.append(template.format(moved))
        self.counters = dict(view.counters)
        if view.opened != self.seen:
            self.seen, self.last = view.opened, now
            self.first = now if self.first is None else self.first
        if view.opened > self.opened and now - self.told_at >= OPENED_EVERY:
            first = now if self.first is None else self.first
            if first < self.last:
                when = f" ({first:.1f}-{self.last:.1f} s)"
            else:  # one sample's worth, told now or later
                when = f" (at {first:.1f} s)" if first < now else ""
            out.append(f"opened {view.opened - self.opened} connection(s){when}")
            self.opened, self.told_at, self.first = view.opened, now, None
        return out


def _sample(w: Workload, view: PoolView) -> None:
    snap = w.built.adapter.snapshot()
    leaked = w.leaked_ids()
    states = list(snap.lanes)
    if leaked:
        # The adapter reports lanes by connection; mark the forgotten ones.
        lane_of = getattr(w.built.adapter, "_lane_of", {})
        for conn_id, lane in lane_of.items():
            if conn_id in leaked and states[lane] != "empty":
                states[lane] = LEAKED
    view.push(tuple(states))
    view.counters = snap.counters
    view.waiting = sorted(dict(w.waiting).items(), key=lambda item: item[1])
    view.queries, view.errors, view.max_wait = w.queries, w.errors, w.longest_wait()
    view.opened = w.opened.value

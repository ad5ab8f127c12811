"""Draw a frame: one panel per pool (lanes, queue, counters), then the event log.

A lane is one connection slot, drawn as a strip of its states since the start, newest on
the right: one character per sample, or, once the run is longer than the strip, per stretch
of samples (showing the busiest state of the stretch). The glyphs differ in shape as well
as colour, so a frame reads the same in a plain log, a recorded SVG or a terminal without
colours.
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from rich.columns import Columns
from rich.console import Group, RenderableType
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from demo.adapter import CONNECTING, EMPTY, IDLE, IN_USE, RETURNING
from demo.scenarios import Scenario

LEAKED = "leaked"  # in use by a thread that forgot it (the leak scenario)
GLYPH = {IN_USE: "█", RETURNING: "▓", CONNECTING: "▒", IDLE: "░", EMPTY: "·", LEAKED: "X"}
STYLE = {
    IN_USE: "green",
    RETURNING: "magenta",
    CONNECTING: "yellow",
    IDLE: "blue",
    EMPTY: "grey50",
    LEAKED: "bold red",
}
LETTER = {IN_USE: "U", RETURNING: "R", CONNECTING: "C", IDLE: "i", EMPTY: ".", LEAKED: "X"}
HISTORY = 2000  # samples kept per lane (at 5 a second, longer than any scenario)
# When a lane's history is longer than its strip, each character stands for several
# samples and shows the busiest of them, in this order: a brief checkout stays visible.
BUSIEST = {LEAKED: 0, IN_USE: 1, RETURNING: 2, CONNECTING: 3, IDLE: 4, EMPTY: 5}
EVENT_LINES = 6
MIN_PANEL = 38  # narrower than this, pools are stacked instead of side by side


@dataclass
class PoolView:
    """What the view knows of one pool; the runner updates it every sample."""

    name: str
    maxconn: int
    lanes: list[deque[str]] = field(default_factory=list)
    waiting: list[tuple[int, float]] = field(default_factory=list)  # (thread, since), oldest first
    queries: int = 0
    errors: int = 0
    opened: int = 0
    max_wait: float = 0.0  # the longest checkout so far, finished or still waiting
    counters: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lanes = [deque([EMPTY], maxlen=HISTORY) for _ in range(self.maxconn)]

    def push(self, states: tuple[str, ...]) -> None:
        for lane, state in zip(self.lanes, states, strict=True):
            lane.append(state)

    def now(self) -> tuple[str, ...]:
        return tuple(lane[-1] for lane in self.lanes)


@dataclass
class Frame:
    scenario: Scenario
    t: float
    phase: str
    pools: list[PoolView]
    events: list[tuple[float, str, str]]


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms"


def squeeze(history: list[str], width: int) -> list[str]:
    """At most `width` states for the whole history: the busiest state of each stretch."""
    if len(history) <= width:
        return history
    bounds = [len(history) * i // width for i in range(width + 1)]
    return [min(history[a:b], key=BUSIEST.__getitem__) for a, b in itertools.pairwise(bounds)]


def _lanes(pool: PoolView, strip: int) -> Table:
    grid = Table.grid(padding=(0, 1))
    grid.add_column(justify="right", style="bold")
    grid.add_column(no_wrap=True)
    grid.add_column(no_wrap=True)
    for i, lane in enumerate(pool.lanes):
        states = squeeze(list(lane), strip)
        text = Text(" " * (strip - len(states)))
        for state in states:
            text.append(GLYPH[state], style=STYLE[state])
        grid.add_row(f"c{i + 1}", text, Text(lane[-1], style=STYLE[lane[-1]]))
    return grid


def _queue(pool: PoolView, t: float, width: int) -> Text:
    text = Text(f"queue {len(pool.waiting)}", style="bold")
    if pool.waiting:
        text.append(f", longest {_ms(t - pool.waiting[0][1])}:")
        for thread, _since in pool.waiting:
            if len(text) + 5 > width:
                text.append(" …")
                break
            text.append(f" t{thread}")
    return text


def _counters(pool: PoolView, width: int) -> Text:
    c = pool.counters
    parts = [f"queries {pool.queries:,}", f"errors {pool.errors:,}", f"opened {pool.opened}"]
    parts.append(f"longest wait {_ms(pool.max_wait)}")
    named = (("connections_closed", "closed"), ("idle_reaped", "reaped"),
             ("leases_reclaimed", "reclaimed"), ("timeouts", "timeouts"))  # fmt: skip
    parts += [f"{label} {c[key]}" for key, label in named if c.get(key)]
    lines = [parts[0]]
    for part in parts[1:]:  # fill lines, never breaking inside a "name value" pair
        if len(lines[-1]) + 2 + len(part) <= width:
            lines[-1] += "  " + part
        else:
            lines.append(part)
    return Text("\n".join(lines), style="cyan")


def _panel(pool: PoolView, t: float, width: int) -> Panel:
    inner = width - 4  # borders and padding
    strip = max(4, inner - 4 - 1 - 10 - 1)  # label, gap, state word, gap
    body = Group(_lanes(pool, strip), _queue(pool, t, inner), _counters(pool, inner))
    title = f"[bold]{pool.name}[/bold] ({pool.maxconn} lanes)"
    return Panel(body, title=title, title_align="left", width=width)


def legend() -> Text:
    text = Text()
    for state in (IN_USE, RETURNING, CONNECTING, IDLE, EMPTY, LEAKED):
        text.append(GLYPH[state], style=STYLE[state])
        text.append(f" {state}  ")
    return text


def render(frame: Frame, width: int) -> RenderableType:
    sc = frame.scenario
    head = Text.assemble(
        (f"{sc.name}", "bold"), f"  t {frame.t:4.1f} / {sc.duration:.1f} s  ", (frame.phase, "bold")
    )
    n = len(frame.pools)
    side_by_side = n > 1 and width // n >= MIN_PANEL
    panel_width = width // n if side_by_side else width
    panels = [_panel(p, frame.t, panel_width) for p in frame.pools]
    pools: RenderableType = Columns(panels, padding=(0, 0)) if side_by_side else Group(*panels)
    events = Text()
    for i, (t, who, message) in enumerate(frame.events[-EVENT_LINES:]):
        events.append(("\n" if i else "") + f"{t:5.1f}s {who:<10.10} {message}")
    return Group(
        head,
        Text(sc.title),
        Text(sc.watch, style="italic"),
        pools,
        legend(),
        Panel(events, title="events", title_align="left", width=width),
    )


def status_line(pool: PoolView, t: float) -> str:
    """One plain line per pool, for piped output: lanes as letters (see LETTER)."""
    lanes = "".join(LETTER[s] for s in pool.now())
    return (
        f"{t:5.1f}s {pool.name:<10.10} [{lanes}] queue {len(pool.waiting):>2} "
        f"done {pool.queries:>6} err {pool.errors:>3} max wait {_ms(pool.max_wait)}"
    )

"""Turning results into words: console tables (rich) and the Markdown report."""

from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from benchmarks import contenders as cs
from benchmarks.common import Table
from benchmarks.goals import Goal
from benchmarks.headline import headline

VERDICT_STYLE = {"MET": "bold green", "MISSED": "bold red", "NOT RUN": "yellow"}


# -- console --------------------------------------------------------------------------


def rich_table(table: Table) -> RichTable:
    """The console form of a result table (pgpool's rows in bold)."""
    rich = RichTable(title=table.title, title_justify="left", title_style="bold")
    for i, col in enumerate(table.columns):
        rich.add_column(col, justify="left" if i == 0 else "right", no_wrap=True)
    for row in table.rows:
        style = "bold" if row and row[0].startswith("pgpool") else None
        rich.add_row(*row, style=style)
    return rich


def print_table(console: Console, table: Table) -> None:
    console.print(rich_table(table))
    width = min(console.width, 100) - 1
    for note in table.notes:
        # Wrapped here, with an indent, rather than by the terminal at its edge.
        text = textwrap.fill(note, width, initial_indent="  ", subsequent_indent="    ")
        console.print(text, style="dim", markup=False, highlight=False)
    console.print()


def print_goals(console: Console, goals: Sequence[Goal]) -> None:
    rich = RichTable(title="pgpool's goals (same run)", title_justify="left", title_style="bold")
    for col in ("scenario", "goal", "measured", "verdict"):
        rich.add_column(col)
    for g in goals:
        rich.add_row(g.scenario, g.goal, g.measured, f"[{VERDICT_STYLE[g.verdict]}]{g.verdict}")
    console.print(rich)
    met = sum(g.met is True for g in goals)
    missed = sum(g.met is False for g in goals)
    console.print(f"  {met} met, {missed} missed, {len(goals) - met - missed} not run\n")


# -- Markdown -------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(table: Table) -> str:
    lines = [
        "| " + " | ".join(_cell(c) for c in table.columns) + " |",
        "|" + "|".join(":--" if i == 0 else "--:" for i in range(len(table.columns))) + "|",
    ]
    for row in table.rows:
        cells = [_cell(c) for c in row]
        if cells and cells[0].startswith("pgpool"):
            cells[0] = f"**{cells[0]}**"
        lines.append("| " + " | ".join(cells) + " |")
    out = f"**{_cell(table.title)}**\n\n" + "\n".join(lines) + "\n"
    if table.notes:
        out += "\n" + "\n".join(f"- {n}" for n in table.notes) + "\n"
    return out


def _explanation(module: ModuleType) -> str:
    """The scenario module's docstring minus its first line, in Markdown."""
    doc = (module.__doc__ or "").strip()
    body = doc.split("\n", 1)[1].strip() if "\n" in doc else ""
    return re.sub(r"``([^`]+)``", r"`\1`", body)


def _goals_md(goals: Sequence[Goal]) -> str:
    lines = ["| scenario | goal | measured | verdict |", "|:--|:--|:--|:--|"]
    for g in goals:
        verdict = {"MET": "**MET**", "MISSED": "**MISSED**"}.get(g.verdict, g.verdict)
        lines.append(f"| {g.scenario} | {_cell(g.goal)} | {_cell(g.measured)} | {verdict} |")
    met = sum(g.met is True for g in goals)
    missed = sum(g.met is False for g in goals)
    return (
        "\n".join(lines) + f"\n\n{met} met, {missed} missed, {len(goals) - met - missed} not run.\n"
    )


def _meta_md(meta: dict[str, Any]) -> str:
    m = meta["machine"]
    v = meta["versions"]
    server = meta["server"]
    durations = meta.get("durations_s") or {}
    took = ", ".join(f"{name} {sec:.0f} s" for name, sec in durations.items())
    lines = [
        f"- run: {meta['started']} ({'quick' if meta['quick'] else 'full'} run, "
        f"{meta['duration_s']:.0f} s in all{': ' + took if took else ''})",
        f"- machine: {m['platform']}, {m['cpu_count']} CPUs, {m.get('cpu_model') or '?'}, "
        f"Python {m['python']} ({m['implementation']})",
        f"- server: PostgreSQL {server['version']} ({server['where']}), {server['dsn']}",
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
    ]
    return "\n".join(lines) + "\n"


def _contenders_md() -> str:
    lines = ["| contender | driver | kind | notes |", "|:--|:--|:--|:--|"]
    for c in cs.CONTENDERS:
        kind = (
            "reference"
            if c.reference
            else ("threaded pool" if c.threaded else "single-thread pool")
        )
        avail = "" if c.available else " (not installed: skipped)"
        lines.append(f"| {c.label} | {c.driver} | {kind} | {_cell(c.note)}{avail} |")
    return "\n".join(lines) + "\n"


METHOD = """\
- Every contender talks to the same server with the same DSN, autocommit on, and the same
  minimum / maximum size; everything else is the library's default unless a scenario says
  otherwise. Connections are counted the same way for everyone: a psycopg2
  `connection_factory` subclass (psycopg 3: a `connection_class` subclass) counts each one
  when it opens and when it closes (or is garbage-collected).
- **sessions** is the most connections a contender had open at once, exact (the peak is
  updated at each connect), not sampled. A contender that exceeds the configured maximum
  is marked `(>max)` and is never the "best other pool" a goal or the headline compares
  with: psycopg2-pool does not count connections taken from its idle deque, so under
  contention it opens more than it was allowed.
- Each measurement is preceded by a warm-up and repeated; cells show the **median** over
  repetitions ± half the interquartile range, and every table says how many repetitions.
  A cell measured once is marked `(n=1)` (never `±0`); a cell whose spread is larger than
  the gap to the nearest other median is marked `~`: its rank is not established.
  Contenders take turns within each repetition, so a slow moment of the machine hits
  everyone alike.
- A ratio next to two medians is the ratio of those medians; the cycle scenario's "paired
  ratio" is instead the median of per-repetition ratios (both timed moments apart), and
  says so. Ratios compare with pools measured in the same run, never with stored numbers.
- Contention: the max wait judged is the median over repetitions of each repetition's
  maximum, not one maximum over the whole run; fairness is least / most requests
  completed by one thread.
- psycopg2.pool and psycopg2-pool raise when exhausted; their threaded pools run inside
  the retry loop their users must write (sleep 1 ms, retry). Single-thread pools
  (pgpool's, psycopg2's SimpleConnectionPool, psycopg2-pool's ConnectionPool) only appear
  in single-thread scenarios.
"""


def markdown_report(
    results: dict[str, Any],
    modules: Sequence[ModuleType],
    goals: Sequence[Goal],
    plots: dict[str, list[str]],
) -> str:
    """The whole report: header, goals, then one section per scenario with its plots."""
    meta = results["meta"]
    parts = [
        "# pgpool benchmark report\n",
        "pgpool against psycopg2.pool and the best pure-Python pools, side by side, measured "
        "in one run on one machine. Generated by `pgpool bench`"
        + (" --quick" if meta["quick"] else "")
        + ".\n",
        _meta_md(meta),
        "## Headline\n",
        markdown_table(headline(results["scenarios"])),
        "## Goals\n",
        _goals_md(goals),
        "## Contenders\n",
        _contenders_md(),
        "## Method\n",
        METHOD,
    ]
    scenarios = results["scenarios"]
    for module in modules:
        name = module.NAME
        parts.append(f"## {module.TITLE}\n")
        parts.append(_explanation(module) + "\n")
        result = scenarios.get(name)
        if result is None:
            parts.append("_Not run._\n")
            continue
        if "error" in result:
            parts.append(f"**This scenario failed:**\n\n```\n{result['error']}\n```\n")
            continue
        for table in module.tables(result):
            parts.append(markdown_table(table))
        for plot in plots.get(name, []):
            parts.append(f"![{plot}](plots/{plot}.png)\n")
    return "\n".join(parts)

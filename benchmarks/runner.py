"""`pgpool bench`: start a server, run the scenarios, print tables, write the report.

Writes into the output folder:

- ``results.json``: every number, plus the machine, the versions and the settings;
- ``report.md``: tables, the goals (MET / MISSED) and an explanation of each scenario;
- ``plots/*.png`` and ``plots/*.svg``: the charts.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import textwrap
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import psycopg2
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

from benchmarks import (
    churn,
    contention,
    cycle,
    django,
    fleet,
    imports,
    scale,
    sizing,
    spike,
    unpooled,
)
from benchmarks.common import Context
from benchmarks.dsn import describe_dsn, mask_dsn
from benchmarks.goals import evaluate
from benchmarks.headline import headline
from benchmarks.plots import write_plots
from benchmarks.report import markdown_report, print_goals, print_table

SCENARIOS: list[ModuleType] = [
    cycle, contention, churn, spike, scale, unpooled, fleet, sizing, imports, django,
]  # fmt: skip
BY_NAME = {m.NAME: m for m in SCENARIOS}
MIN_SERVER_CONNECTIONS = 120  # spike opens up to 50 + the other pools' leftovers
WIDTH = 100  # columns every table fits in


@dataclass(frozen=True)
class Options:
    dsn: str | None = None  # None: start an embedded server
    out: Path = Path("bench-results")
    quick: bool = False
    scenarios: tuple[str, ...] = ()  # empty: all of them


def select(names: Sequence[str]) -> list[ModuleType]:
    """The scenario modules named (all if none), in the canonical order."""
    unknown = [n for n in names if n not in BY_NAME]
    if unknown:
        raise ValueError(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(BY_NAME)}")
    return [m for m in SCENARIOS if not names or m.NAME in names]


@contextmanager
def server(dsn: str | None) -> Iterator[tuple[str, str, int | None]]:
    """Yield (dsn, where, postmaster pid): the given DSN (pid unknown), or an embedded
    server started for this run."""
    if dsn is not None:
        yield dsn, "given with --dsn", None
        return
    from testbed.embedded import EmbeddedPostgres

    with EmbeddedPostgres(max_connections=200) as pg:
        assert pg.directory is not None
        pid_file = pg.directory / "data" / "postmaster.pid"
        yield pg.dsn, "embedded, started for this run", int(pid_file.read_text().split()[0])


def _server_info(dsn: str, where: str) -> dict[str, Any]:
    from testbed.embedded import run_sql

    rows = run_sql(
        dsn, "SELECT current_setting('server_version'), current_setting('max_connections')::int"
    )
    assert rows is not None
    version, max_connections = rows[0]
    return {
        "version": version,
        "max_connections": max_connections,
        "where": where,
        "dsn": describe_dsn(dsn),  # host, port and dbname only: never a password
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str | None]:
    import pgpool

    return {
        "pgpool": pgpool.__version__,
        "psycopg2": _version("psycopg2-binary") or _version("psycopg2"),
        "psycopg": _version("psycopg"),
        "psycopg_pool": _version("psycopg-pool"),
        "SQLAlchemy": _version("SQLAlchemy"),
        "DBUtils": _version("DBUtils"),
        "psycopg2-pool": _version("psycopg2-pool"),
        "matplotlib": _version("matplotlib"),
    }


def _machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "loadavg_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def run(options: Options, console: Console | None = None) -> int:
    """Run the benchmark; return 0, 1 if a scenario failed, 2 if the server is unreachable."""
    if console is None:
        # Every table is laid out to fit 100 columns; piped output (CI logs, tests) gets
        # exactly that instead of rich's default of 80.
        piped = not sys.stdout.isatty() and "COLUMNS" not in os.environ
        console = Console(width=WIDTH if piped else None)
    modules = select(options.scenarios)
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    kind = "quick" if options.quick else "full"
    machine = _machine()  # the load average now, before the run adds its own
    durations: dict[str, float] = {}
    with server(options.dsn) as (dsn, where, server_pid):
        durations["server start"] = time.perf_counter() - t0
        try:
            info = _server_info(dsn, where)
        except psycopg2.Error as exc:
            message = mask_dsn(str(exc).strip())  # libpq may echo parts of the DSN
            console.print(f"[bold red]cannot connect to {describe_dsn(dsn)}:[/bold red] {message}")
            return 2
        console.print(
            f"[bold]pgpool bench[/bold]: {kind} run of {len(modules)} scenario(s) on "
            f"PostgreSQL {info['version']}\n  {where}: {info['dsn']}"
        )
        if info["max_connections"] < MIN_SERVER_CONNECTIONS:
            console.print(
                f"[yellow]warning: the server allows only {info['max_connections']} "
                f"connections; the spike scenario needs about {MIN_SERVER_CONNECTIONS}[/yellow]"
            )
        scenarios = _run_scenarios(modules, dsn, server_pid, options.quick, console)
        stop = time.perf_counter()
    durations.update({name: res.get("seconds", 0.0) for name, res in scenarios.items()})
    results: dict[str, Any] = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "duration_s": 0.0,  # set once the plots are drawn, just before writing
            "durations_s": durations,
            "quick": options.quick,
            "scenarios": [m.NAME for m in modules],
            "machine": {
                **machine,
                "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            },
            "versions": _versions(),
            "server": info,
            "command": "pgpool bench" + (" --quick" if options.quick else ""),
        },
        "scenarios": scenarios,
    }
    goals = evaluate({k: v for k, v in scenarios.items() if "error" not in v})
    results["goals"] = [g.to_dict() for g in goals]
    print_table(console, headline(scenarios))
    print_goals(console, goals)
    out = options.out
    out.mkdir(parents=True, exist_ok=True)
    plots_start = time.perf_counter()
    plots = write_plots(scenarios, out / "plots")
    durations["server stop"] = plots_start - stop
    durations["plots"] = time.perf_counter() - plots_start
    # The total the CLI prints and the report states: everything up to here (writing two
    # text files adds milliseconds).
    total = results["meta"]["duration_s"] = time.perf_counter() - t0
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "report.md").write_text(markdown_report(results, modules, goals, plots))
    console.print(
        f"wrote {out / 'results.json'}, {out / 'report.md'} and "
        f"{sum(len(v) for v in plots.values()) * 2} plots in {out / 'plots'}"
    )
    took = f"took {fmt_durations(total, durations)}"
    took = textwrap.fill(took, WIDTH - 1, subsequent_indent="  ")
    console.print(took, highlight=False)
    failed = [name for name, res in scenarios.items() if "error" in res]
    if failed:
        console.print(f"[bold red]scenario(s) failed: {', '.join(failed)}[/bold red]")
        return 1
    return 0


def fmt_durations(total: float, durations: dict[str, float]) -> str:
    """``53 s in all: server start 1 s, cycle 9 s, ...``: the measured parts of a run."""
    parts = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in durations.items())
    return f"{total:.0f} s in all: {parts}"


def _run_scenarios(
    modules: Sequence[ModuleType],
    dsn: str,
    server_pid: int | None,
    quick: bool,
    console: Console,
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description:<48}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    # A progress bar only on a terminal: piped, rich would leave its last state behind as
    # a stale line among the tables. Each scenario says when it starts and how long it took.
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        task = progress.add_task("starting", total=sum(m.steps(quick) for m in modules))

        def advance(description: str) -> None:
            progress.update(task, advance=1, description=description)

        for module in modules:
            progress.update(task, description=f"{module.NAME}")
            if not console.is_terminal:
                console.print(f"{module.NAME}: running ({module.steps(quick)} steps)")
            done_before = progress.tasks[0].completed
            ctx = Context(dsn=dsn, quick=quick, advance=advance, server_pid=server_pid)
            start = time.perf_counter()
            try:
                result = module.run(ctx)
            except Exception:
                progress.console.print(f"[bold red]scenario {module.NAME} failed[/bold red]")
                progress.console.print(traceback.format_exc())
                results[module.NAME] = {"error": traceback.format_exc(limit=8)}
            else:
                result["seconds"] = time.perf_counter() - start
                results[module.NAME] = result
                for table in module.tables(result):
                    print_table(progress.console, table)
                progress.console.print(f"[dim]{module.NAME} took {result['seconds']:.0f} s[/dim]\n")
            # A failed or short scenario still moves the bar to where it should be.
            expected = done_before + module.steps(quick)
            progress.update(task, completed=expected)
    return results

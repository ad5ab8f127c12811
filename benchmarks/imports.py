"""Scenario 9, import: what ``import pgpool`` costs a process, next to the other pools.

"Import it as a lightweight alternative to psycopg2.pool" is a reason people pick a pool:
a command-line tool, a serverless function or a test run pays the import on every start.
So each contender's import is timed the way a process meets it: in a fresh interpreter.

Method: for each module (pgpool, psycopg2.pool, psycopg_pool, sqlalchemy.pool) a new
``python -c`` process times its own ``import`` with ``time.perf_counter`` and reads its
resident memory just before and just after; the interpreter's own start-up is in
neither figure. The contenders take turns, the first one rotating from
repetition to repetition, so a slow patch of the machine hits each alike; the figures are
medians over the repetitions. A first round is not counted: it warms the operating
system's file cache and writes the bytecode caches (``__pycache__``) that an installed
package has (pip compiles them at install time), even where PYTHONDONTWRITEBYTECODE is set
(the children run without it): without them every import compiles the modules' source,
which for pgpool's own modules took longer than the rest of its import.

Nothing here connects to the server: the figures are the import's alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from benchmarks.common import Context, Table, fmt_ratio, spread_column, spread_note
from benchmarks.stats import summarize

NAME = "import"
TITLE = "import, in a fresh interpreter"
# (key, label, module imported)
MODULES: list[tuple[str, str, str]] = [
    ("pgpool", "pgpool", "pgpool"),
    ("psycopg2", "psycopg2.pool", "psycopg2.pool"),
    ("psycopg_pool", "psycopg_pool", "psycopg_pool"),
    ("sqlalchemy", "sqlalchemy.pool", "sqlalchemy.pool"),
]
BASELINE = "psycopg2"
# Timed inside the child, so that interpreter start-up is not counted. Memory is the
# resident set from /proc/self/statm (Linux); elsewhere the peak from getrusage, which a
# child can inherit from a larger parent, so there the figure may read low.
PROBE = """\
import os, sys, time

def rss_mib():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10

before = rss_mib()
start = time.perf_counter()
import {module}
seconds = time.perf_counter() - start
print(seconds, rss_mib() - before)
"""


def _sizes(quick: bool) -> int:
    """Repetitions: each one starts one process per module."""
    return 3 if quick else 20


def steps(quick: bool) -> int:
    return 1


def measure(module: str) -> tuple[float, float]:
    """(milliseconds, MiB of resident memory added) of importing `module`, in a fresh
    interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
        env=env,  # bytecode caches are written and read, as for an installed package
        # Never the clone's folder first on sys.path: each import is the installed one.
        cwd=os.path.dirname(sys.executable),
    )
    seconds, mib = out.stdout.split()[-2:]  # the last line: a module may print
    return float(seconds) * 1e3, float(mib)


def _importable(module: str) -> bool:
    try:
        measure(module)
    except subprocess.CalledProcessError:
        return False
    return True


def run(ctx: Context) -> dict[str, Any]:
    # A first import of each, not counted: caches warm, bytecode written (see above).
    chosen = [m for m in MODULES if _importable(m[2])]
    missing = [m[1] for m in MODULES if m not in chosen]
    ms: dict[str, list[float]] = {key: [] for key, _, _ in chosen}
    mib: dict[str, list[float]] = {key: [] for key, _, _ in chosen}
    reps = _sizes(ctx.quick)
    for rep in range(reps):
        shift = rep % len(chosen)
        for key, _label, module in chosen[shift:] + chosen[:shift]:
            t, m = measure(module)
            ms[key].append(t)
            mib[key].append(m)
    ctx.advance("import")
    base_mib = summarize(mib[BASELINE]).median if BASELINE in mib else None
    rows: dict[str, Any] = {}
    for key, _label, _module in chosen:
        t, m = summarize(ms[key]), summarize(mib[key])
        rows[key] = {
            "ms": t.to_dict(),
            "mib": m.to_dict(),
            # The ratio of each repetition's pair, timed moments apart, then the median: on a
            # busy machine far steadier than the ratio of two medians.
            "vs_baseline": (
                summarize(a / b for a, b in zip(ms[key], ms[BASELINE], strict=True)).median
                if BASELINE in ms
                else None
            ),
            "mib_over_baseline": m.median - base_mib if base_mib is not None else None,
        }
    return {
        "title": TITLE,
        "settings": {"repetitions": reps, "python": sys.version.split()[0], "missing": missing},
        "labels": {key: label for key, label, _ in MODULES},
        "rows": rows,
    }


def tables(result: dict[str, Any]) -> list[Table]:
    rows = result["rows"]
    labels = result["labels"]
    ms = spread_column(rows, "ms", 1)
    mib = spread_column(rows, "mib", 1)
    cells = []
    for key, row in rows.items():
        over = row["mib_over_baseline"]
        cells.append(
            [
                labels[key],
                ms[key],
                fmt_ratio(row["vs_baseline"]),
                mib[key],
                "-" if over is None or key == BASELINE else f"{over:+.1f}",
            ]
        )
    st = result["settings"]
    notes = [
        spread_note(st["repetitions"], "fresh processes per module")
        + f", the first rotating; Python {st['python']}; lower is better",
        "ms: the import statement alone, timed inside the process (interpreter start-up "
        "excluded); MiB: the resident memory it added",
        "vs psycopg2.pool: the median of per-repetition ratios (timed moments apart), not the "
        "ratio of the two medians shown; psycopg2.pool's import includes psycopg2's",
    ]
    if st["missing"]:
        notes.append("not installed, not measured: " + ", ".join(st["missing"]))
    cols = ["module", "ms", "vs psycopg2.pool", "MiB added", "MiB vs psycopg2.pool"]
    return [Table(f"import: {TITLE.split(', ', 1)[1]}", cols, cells, notes)]

"""``python -m benchmarks`` (what ``bash scripts/bench.sh`` and ``pgpool bench`` run).

Compares pgpool with psycopg2.pool and the best Python pools on a PostgreSQL server (an
embedded one started for the run, or ``--dsn``), prints a table per scenario and writes
``results.json``, ``report.md`` and plots into ``--out``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from benchmarks import runner

SCENARIOS = ", ".join(runner.BY_NAME)


def parser(prog: str = "pgpool bench") -> argparse.ArgumentParser:
    bench = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Benchmark pgpool against psycopg2.pool, psycopg2-pool, psycopg_pool, SQLAlchemy and "
            "DBUtils. "
            "Starts a throwaway PostgreSQL unless --dsn is given; writes results.json, "
            "report.md and plots (PNG, SVG) into --out."
        ),
    )
    bench.add_argument(
        "--dsn",
        help="PostgreSQL to run against (libpq key=value or URI); default: start an "
        "embedded server for the run. Only host, port and dbname are ever printed.",
    )
    bench.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results"),
        help="output folder (default: %(default)s)",
    )
    bench.add_argument(
        "--quick",
        action="store_true",
        help="small sizes: every scenario once, for a smoke test",
    )
    bench.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only this scenario (repeatable); one of: {SCENARIOS}",
    )
    return bench


def main(argv: Sequence[str] | None = None, prog: str = "pgpool bench") -> int:
    args = parser(prog).parse_args(argv)
    try:
        options = runner.Options(
            dsn=args.dsn, out=args.out, quick=args.quick, scenarios=tuple(args.scenario)
        )
        runner.select(options.scenarios)  # reject an unknown name before starting anything
    except ValueError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    code: int = runner.run(options)
    return code


if __name__ == "__main__":
    sys.exit(main())

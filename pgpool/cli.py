"""The ``pgpool`` command. One subcommand for now: ``pgpool bench``.

``pgpool bench`` compares pgpool with psycopg2.pool and the best Python pools on a
PostgreSQL server (an embedded one started for the run, or ``--dsn``), prints a table per
scenario and writes ``results.json``, ``report.md`` and plots into ``--out``.

The benchmark lives in the separate ``benchmarks`` package and needs the ``bench`` extra
(``pip install 'pgpool[bench]'``: matplotlib, rich, psycopg 3, SQLAlchemy, DBUtils,
pgserver). It is imported only when ``bench`` runs, so the pool itself needs nothing but
psycopg2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

SCENARIOS = "cycle, contention, churn, spike, scale, unpooled"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgpool", description="pgpool command line tools.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    bench = commands.add_parser(
        "bench",
        help="benchmark pgpool against psycopg2.pool and other pools",
        description=(
            "Benchmark pgpool against psycopg2.pool, psycopg_pool, SQLAlchemy and DBUtils. "
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
        help="small sizes for CI: every scenario, under a minute in total",
    )
    bench.add_argument(
        "--scenario",
        action="append",
        default=[],
        metavar="NAME",
        help=f"run only this scenario (repeatable); one of: {SCENARIOS}",
    )
    return parser


def _bench(args: argparse.Namespace) -> int:
    try:
        # Imported here, not at the top: the runtime package must not need the bench extra.
        runner = importlib.import_module("benchmarks.runner")
    except ImportError as exc:
        print(
            f"pgpool bench needs the benchmark dependencies ({exc.name or exc}): "
            "pip install 'pgpool[bench]'",
            file=sys.stderr,
        )
        return 2
    try:
        options = runner.Options(
            dsn=args.dsn, out=args.out, quick=args.quick, scenarios=tuple(args.scenario)
        )
        runner.select(options.scenarios)  # reject an unknown name before starting anything
    except ValueError as exc:
        print(f"pgpool bench: {exc}", file=sys.stderr)
        return 2
    code: int = runner.run(options)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pgpool`` command with `argv` (default: the process arguments)."""
    args = _parser().parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    return 2  # pragma: no cover - argparse rejects unknown commands first


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

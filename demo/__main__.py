"""``python -m demo SCENARIO [--pool NAME] [--record FILE.svg]`` (``bash scripts/demo.sh``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import psycopg2
from rich.console import Console

from benchmarks.dsn import mask_dsn
from demo.runner import run
from demo.scenarios import SCENARIOS
from demo.workload import KNOWN_POOLS, check_name


def parser() -> argparse.ArgumentParser:
    cli = argparse.ArgumentParser(
        prog="python -m demo",
        description="Watch a connection pool at work: one lane per connection, the queue "
        "of waiting threads, counters and events. Starts a throwaway PostgreSQL unless "
        "--dsn is given. Ends by itself.",
    )
    lines = [f"  {s.name:<11} {s.title}" for s in SCENARIOS.values()]
    cli.epilog = "scenarios:\n" + "\n".join(lines)
    cli.formatter_class = argparse.RawDescriptionHelpFormatter
    cli.add_argument("scenario", choices=list(SCENARIOS), metavar="SCENARIO")
    cli.add_argument(
        "--pool",
        action="append",
        default=[],
        metavar="NAME",
        help="also run this pool, side by side with pgpool (repeatable): psycopg2 "
        "(psycopg2.pool), a course pool (" + ", ".join(KNOWN_POOLS[2:]) + "), or "
        "module:Class for any pool taking (minconn, maxconn, dsn)",
    )
    cli.add_argument("--record", type=Path, metavar="FILE.svg", help="save the final frame")
    cli.add_argument("--dsn", help="use this PostgreSQL instead of starting one")
    cli.add_argument("--short", action="store_true", help="run the scenario in ~2 s (tests)")
    return cli


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    pools = ["pgpool", *(p for p in args.pool if p != "pgpool")]
    console = Console(highlight=False)
    try:
        for pool in pools:
            check_name(pool)  # before a server is started for nothing
        if args.dsn is not None:
            return run(
                args.scenario, pools, args.dsn, console, short=args.short, record=args.record
            )
        from testbed.embedded import EmbeddedPostgres

        console.print("starting a throwaway PostgreSQL...", highlight=False)
        with EmbeddedPostgres(max_connections=100) as server:
            return run(
                args.scenario,
                pools,
                server.dsn,
                console,
                server=server,
                short=args.short,
                record=args.record,
            )
    except ValueError as exc:
        print(f"python -m demo: {exc}", file=sys.stderr)
        return 2
    except psycopg2.OperationalError as exc:  # the server is unreachable: say so, briefly
        reason = mask_dsn(str(exc).strip().splitlines()[0])  # libpq may echo the DSN
        print(f"python -m demo: cannot connect: {reason}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

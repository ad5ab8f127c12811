"""The ``pgpool`` command: ``pgpool --version``, and ``pgpool bench`` from a clone.

The benchmark is a tool of the repository (``benchmarks/`` beside ``pgpool/``), not part
of what ``pip install`` ships: the installed package is the pool alone and needs nothing
but psycopg2. ``pgpool bench`` runs it when pgpool is installed from a clone in editable
mode (as ``bash scripts/bench.sh`` does); anywhere else it says how to get it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from . import __version__

# Where the repository keeps the benchmark, when this package was installed from a clone.
REPOSITORY = Path(__file__).resolve().parent.parent
HOW_TO_BENCH = (
    "pgpool bench is a tool of the repository, not of the installed package: from a clone "
    "of pgpool, run `bash scripts/bench.sh` (it makes .venv and installs the bench extra)"
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pgpool", description="pgpool command line tools.")
    parser.add_argument("--version", action="version", version=f"pgpool {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    commands.add_parser(
        "bench",
        help="benchmark pgpool against psycopg2.pool and other pools (from a clone)",
        add_help=False,  # --help goes to the benchmark's own parser
    )
    return parser


def _bench(argv: list[str]) -> int:
    if not (REPOSITORY / "benchmarks" / "runner.py").is_file():
        print(HOW_TO_BENCH, file=sys.stderr)
        return 2
    # The clone's own benchmarks first: a `benchmarks` package elsewhere must not win.
    sys.path.insert(0, str(REPOSITORY))
    try:
        entry = importlib.import_module("benchmarks.__main__")
    except ImportError as exc:
        print(
            f"pgpool bench needs the benchmark dependencies ({exc.name or exc}): "
            f"pip install -e '{REPOSITORY}[bench]'",
            file=sys.stderr,
        )
        return 2
    code: int = entry.main(argv)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pgpool`` command with `argv` (default: the process arguments)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["bench"]:
        return _bench(args[1:])
    _parser().parse_args(args)  # --version, --help, or an error naming the bad command
    return 2  # pragma: no cover - argparse exits first


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

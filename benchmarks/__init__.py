"""`pgpool bench`: pgpool against psycopg2.pool and the best Python pools, side by side.

A tool of the repository, not part of the installed package: run it from a clone with
``bash scripts/bench.sh`` (or ``python -m benchmarks`` in a venv with the ``bench`` extra).
One module per scenario; `runner.py` starts the server and runs them.
"""

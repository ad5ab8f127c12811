#!/usr/bin/env bash
# The main job: pgpool bench on an embedded PostgreSQL. Usage: bash scripts/bench.sh [args...]
# (--help lists them). Installs only what the benchmark needs (the bench extra).
PGPOOL_EXTRAS=bench
source "$(dirname "$0")/_venv.sh"
source scripts/pgbouncer.sh  # the fleet scenario's PgBouncer rows: apt-get install when root
exec python -m benchmarks "$@"

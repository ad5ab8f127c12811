#!/usr/bin/env bash
# A live view of a pool at work, on an embedded PostgreSQL. Usage:
#   bash scripts/demo.sh SCENARIO [--pool psycopg2] [--record FILE.svg]
# Scenarios: steady, contention, spike, restart, leak (--help says more). Installs only
# what the benchmark needs (the bench extra: rich and the pgserver wheel).
PGPOOL_EXTRAS=bench
source "$(dirname "$0")/_venv.sh"
exec python -m demo "$@"

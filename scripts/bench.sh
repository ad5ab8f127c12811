#!/usr/bin/env bash
# The main job: pgpool bench on an embedded PostgreSQL. Usage: bash scripts/bench.sh [pgpool bench args...]
source "$(dirname "$0")/_venv.sh"
exec pgpool bench "$@"

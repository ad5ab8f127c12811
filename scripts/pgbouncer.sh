#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/bench.sh: make sure PgBouncer is installed for
# tests/test_pgbouncer*.py and the fleet benchmark's PgBouncer rows. Installs it from the
# system package manager (apt) when it is missing and we are root; otherwise says how to
# get it, and those tests skip themselves (with the same hint), as do the bench rows.
# Never fatal: the rest runs either way. The tests run PgBouncer as an unprivileged user
# (PgBouncer refuses to run as root), never as the system service the package may set up.
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "== installing pgbouncer with apt-get (for the PgBouncer tests)"
        if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer; } >/dev/null; then
            echo "== could not install pgbouncer: the PgBouncer tests and bench rows will be skipped"
        fi
    else
        echo "== pgbouncer not found: the PgBouncer tests and bench rows will be skipped" \
             "(install it, e.g. 'sudo apt-get install pgbouncer', or put it on PATH)"
    fi
fi

# Sourced by scripts/test.sh and scripts/bench.sh: make .venv and install pgpool (editable)
# with the extras the calling script needs, given as PGPOOL_EXTRAS (e.g. "bench" or
# "test,bench"). Only Python 3.11+ is needed on the machine; the PostgreSQL server comes
# from the pgserver wheel. The test and bench extras each bring the driver (psycopg2-binary):
# pgpool itself requires none, see pyproject.toml.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
extras=${PGPOOL_EXTRAS:?set PGPOOL_EXTRAS before sourcing _venv.sh}
if [ ! -x .venv/bin/python ]; then
    echo "== making .venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv .venv
fi
# Install again only when pyproject.toml changed since the last install of these extras.
stamp=".venv/.pgpool-installed-${extras//,/-}"
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
    echo "== installing pgpool with [$extras] into .venv (first run only; the time it took follows)"
    start=$SECONDS
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$extras]"
    cp pyproject.toml "$stamp"
    echo "== installed in $((SECONDS - start)) s"
fi
export PATH="$PWD/.venv/bin:$PATH"

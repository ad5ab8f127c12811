# Sourced by scripts/test.sh and scripts/bench.sh: make .venv and install pgpool with its extras.
# Only Python 3.11+ is needed on the machine; the PostgreSQL server comes from the pgserver wheel.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# Reinstall only when pyproject.toml changed since the last install.
stamp=.venv/.pgpool-installed
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e '.[test,bench]'
    cp pyproject.toml "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"

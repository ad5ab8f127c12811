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
# Install again only when pyproject.toml changed since the last install of these extras, or
# when `import pgpool` outside this folder would not find this clone's pgpool: an editable
# install points at the folder it was made from, and a venv reused from (or reinstalled by)
# another clone would make the bench's import scenario, which runs elsewhere, time that one.
stamp=".venv/.pgpool-installed-${extras//,/-}"
here_pkg="$PWD/pgpool/__init__.py"
venv_python="$PWD/.venv/bin/python"
installed_pkg=$(cd / && "$venv_python" -c 'import importlib.util as u; s = u.find_spec("pgpool"); print(s.origin if s else "")' 2>/dev/null || true)
if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp" || [ "$installed_pkg" != "$here_pkg" ]; then
    echo "== installing pgpool with [$extras] into .venv (first run only; the time it took follows)"
    start=$SECONDS
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$extras]"
    cp pyproject.toml "$stamp"
    echo "== installed in $((SECONDS - start)) s"
fi
export PATH="$PWD/.venv/bin:$PATH"

# Make .venv-django-SERIES (SERIES: 4.2 or 5.2) for tests/test_django.py: pgpool[django]
# with that Django series, on psycopg2 only. A venv of its own because Django picks psycopg 3
# whenever it can import it, and .venv has psycopg 3 (the bench extra). Run by the test
# itself (it is quick once made); installs again only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
series=${1:?usage: bash scripts/_venv_django.sh 4.2|5.2}
venv=".venv-django-$series"
PYTHON=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    echo "== making $venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$venv"
fi
# What was installed: pyproject.toml and the packages this script asks for.
extras="binary,django,prometheus"  # prometheus-client: the collector's labels are checked
wanted="$(cat pyproject.toml; echo "pgpool[$extras] Django~=$series.0")"
stamp="$venv/.pgpool-installed"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "== installing pgpool[django] with Django $series into $venv (first run only)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[$extras]" "Django~=$series.0"
    echo "$wanted" > "$stamp"
fi

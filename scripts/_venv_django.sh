# Make .venv-django-SERIES (SERIES: 4.2 or 5.2) for tests/test_django.py: pgpool[django]
# with that Django series, on psycopg2 only: a venv of its own because Django picks
# psycopg 3 whenever it can import it, and .venv has psycopg 3 (the bench extra).
# With "bench" as a second argument, make .venv-django-SERIES-bench for the bench's django
# scenario: the same plus django-db-connection-pool[psycopg2], a SQLAlchemy pool inside a
# Django backend, to compare with (its "postgresql" extra would bring psycopg 3).
# Run by the test and the bench themselves (quick once made); installs again only when
# pyproject.toml or what this script asks for changed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
series=${1:?usage: bash scripts/_venv_django.sh 4.2|5.2 [bench]}
flavour=${2:-}
venv=".venv-django-$series${flavour:+-$flavour}"
# gevent, psycogreen: the backend under gevent workers; coverage: PGPOOL_DJANGO_COVERAGE
more=("gevent>=24.2" "psycogreen>=1.0.2" "coverage>=7.5")
if [ "$flavour" = bench ]; then more+=("django-db-connection-pool[psycopg2]"); fi
PYTHON=${PYTHON:-python3}
if [ ! -x "$venv/bin/python" ]; then
    echo "== making $venv with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$venv"
fi
# What was installed: pyproject.toml and the packages this script asks for.
extras="binary,django,prometheus"  # prometheus-client: the collector's labels are checked
wanted="$(cat pyproject.toml; echo "pgpool[$extras] Django~=$series.0 ${more[*]}")"
stamp="$venv/.pgpool-installed"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$wanted" ]; then
    echo "== installing pgpool[django] with Django $series into $venv (first run only)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    "$venv/bin/python" -m pip install --quiet -e ".[$extras]" "Django~=$series.0" "${more[@]}"
    echo "$wanted" > "$stamp"
fi

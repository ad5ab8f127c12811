"""Tools of the repository that the tests, the benchmark and the course share.

Nothing here is part of the `pgpool` package that ``pip install`` ships:

- `testbed.embedded`: a throwaway PostgreSQL server from the ``pgserver`` wheel's binaries;
- `testbed.proxy`: a loopback TCP proxy that delays connects, cuts connections and
  black-holes traffic, for fault tests;
- ``testbed/django_project``: a small Django project, run in a venv of its own by
  tests/test_django.py and by the bench's django scenario.
"""

"""Tools of the repository that the tests, the benchmark and the course share.

Nothing here is part of the `pgpool` package that ``pip install`` ships:

- `testbed.embedded`: a throwaway PostgreSQL server from the ``pgserver`` wheel's binaries;
- `testbed.proxy`: a loopback TCP proxy that delays connects, cuts connections and
  black-holes traffic, for fault tests.
"""

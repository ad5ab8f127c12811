"""The pooling course: small runnable pools, each one step further (see docs/learn/).

Every step is a module with the same interface as psycopg2.pool:
``Pool(minconn, maxconn, *args, **kwargs)`` (connection arguments as for psycopg2.connect),
``getconn(timeout=None)``, ``putconn(conn)``, ``closeall()``. Run a step's demonstration
with ``python -m course.stepN_...``; each starts a throwaway PostgreSQL of its own unless
``PGPOOL_DSN`` names a server. The course is a tool of the repository: pip installs pgpool only.
"""

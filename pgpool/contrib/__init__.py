"""Integrations with frameworks that open connections themselves.

Nothing here is imported by ``import pgpool``: each integration imports its framework, and
is loaded only when the framework asks for it (Django: ``ENGINE: "pgpool.contrib.django"``).
"""
